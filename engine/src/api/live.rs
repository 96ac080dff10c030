//! `GET /api/v1/live`: server-sent events naming what changed as the API reads it (a campaign's
//! definition or command, its stats, its lifecycle events, a saved segment), so a client (the
//! dashboard) fetches what it shows when it changes instead of polling.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::sse::{Event, KeepAlive, Sse},
};
use futures_util::stream::{self, Stream};
use tokio::sync::{broadcast, mpsc};

use super::ApiState;

/// Events a slow client may fall behind by before it is told to fetch everything again.
const BUFFERED: usize = 256;

/// Forwards the keys `changes` names as events called `name` until the client goes.
fn forward(name: &'static str, mut changes: broadcast::Receiver<String>, to: mpsc::Sender<Event>) {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = to.closed() => return,
                change = changes.recv() => match change {
                    Ok(key) => Event::default().event(name).data(key),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Event::default().event("lagged").data(name)
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if to.send(event).await.is_err() {
                return;
            }
        }
    });
}

/// What changed, as it is read: a first `ready` event, then events `campaign`, `stats`,
/// `events` and `segment` whose data is the campaign's (or segment's) id, and `lagged` (data:
/// the table) when the client fell behind and should fetch everything again. A comment every 15
/// seconds keeps the connection open.
#[utoipa::path(get, path = "/api/v1/live", tag = "dashboard",
    responses((status = 200, description = "server-sent events: ready, campaign, stats, events, \
        segment, lagged", body = String, content_type = "text/event-stream"),
        (status = 401, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn live(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (to, from) = mpsc::channel(BUFFERED);
    forward("campaign", state.campaigns().changes(), to.clone());
    forward("stats", state.stats().changes(), to.clone());
    forward("events", state.events().changes(), to.clone());
    forward("segment", state.segments().changes(), to);
    let ready = stream::once(async { Ok(Event::default().event("ready").data("")) });
    let changes =
        stream::unfold(
            from,
            |mut from| async move { from.recv().await.map(|event| (Ok(event), from)) },
        );
    Sse::new(futures_util::StreamExt::chain(ready, changes))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
