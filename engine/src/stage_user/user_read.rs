//! What checking a user against campaigns reads of them, read at most once per occasion: an
//! event that triggers several campaigns decodes the user's profile and scans their history
//! once for all of them (nothing on an event's way changes either).

use std::{borrow::Cow, cell::OnceCell};

use super::{history, History, ProcessError, Profile, HISTORY, PROFILES};
use crate::{
    campaign::{Filter, SegmentBook},
    runtime::ProcessorContext,
};

/// A user's profile and history as one occasion reads them.
#[derive(Default)]
pub(super) struct UserRead<'a> {
    /// The stored profile as the caller already read it (a run's scan, an event's handling),
    /// or `None`: read it from the store.
    stored: Option<&'a [u8]>,
    profile: OnceCell<Profile>,
    history: OnceCell<History>,
}

impl<'a> UserRead<'a> {
    /// A user whose stored profile is `stored`, if the caller read it.
    pub(super) fn new(stored: Option<&'a [u8]>) -> Self {
        Self { stored, ..Self::default() }
    }

    /// `user`'s profile (with `age` derived at `at_ms`) and, when matching `who` reads it (see
    /// [`Filter::reads_history`]), their event history; else an empty history, which `who`
    /// never reads.
    pub(super) fn load(
        &self,
        ctx: &mut ProcessorContext<'_>,
        user: &str,
        at_ms: i64,
        who: &Filter,
        segments: &SegmentBook,
    ) -> Result<(Profile, Cow<'_, History>), ProcessError> {
        if self.profile.get().is_none() {
            let profiles = ctx.store(PROFILES)?;
            let profile = match self.stored {
                Some(bytes) => profiles.decode_as::<Profile>(bytes)?,
                None => profiles.get_as::<Profile>(user.as_bytes())?.unwrap_or_default(),
            };
            let _ = self.profile.set(profile);
        }
        let mut profile = self.profile.get().cloned().unwrap_or_default();
        profile.derive_age(at_ms);
        if !who.reads_history(&|id| segments.get(id).map(|segment| &segment.who)) {
            return Ok((profile, Cow::Owned(History::default())));
        }
        if self.history.get().is_none() {
            let _ = self.history.set(history::load(&ctx.store(HISTORY)?, user)?);
        }
        Ok((
            profile,
            self.history.get().map_or_else(|| Cow::Owned(History::default()), Cow::Borrowed),
        ))
    }
}
