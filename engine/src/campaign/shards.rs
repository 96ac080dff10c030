//! A campaign's shards on the campaign flow (see `docs/architecture.md`): the records about one
//! user go to the user's shard, keyed `<campaign>\u{1f}<shard>`; what concerns the whole
//! campaign goes to its home, keyed by the campaign id. A campaign with one shard in effect is
//! keyed by its id alone, exactly as before sharding existed.

use super::{sample, Assignment, Campaign, TestPopulation, Trigger};
use crate::{
    model::{
        scheduled_run_time, Candidate, Engagement, RunTally, SendCommand, SendConfirmed, Skip,
    },
    runtime::partition_for,
};

/// Separates the campaign id from the shard number in a shard's key.
pub const SEPARATOR: char = '\u{1f}';

/// The number of shards in effect for `campaign`: its `options.shards` where its rules are
/// exact over shards today, else 1 (everything at home). Exact today: limits on an app with
/// frequency caps (places held in flight at the shards until the send gate answers, a refused
/// one going to the shard's next user or home: `stage_campaign::leases`, `standby`); a
/// campaign throttle's windows shared out as tokens by the home (`stage_campaign::tokens`); a
/// scheduled campaign with one message, an A/B test, alternation, a split or messages by
/// property (the home plans each run, within what is left of its day under a daily limit; with
/// `timezone: user`, users who come after the release on places of their day leased by the
/// home, as a triggered campaign's); a
/// triggered campaign with one message or messages by property (its total and daily limits
/// are leased to the shards by the home), or alternation or a split (global assignment indices
/// leased with the places of a total or daily limit, or with places of their own without one:
/// `stage_campaign::indices`), or an A/B test of a number of users (its test users are such
/// indices, its winner decided at home: `stage_campaign::ab`).
pub fn in_effect(campaign: &Campaign) -> u32 {
    let supported = match (&campaign.when.trigger, &campaign.assignment) {
        // With `timezone: user` and a daily limit, users who come after the release are sent
        // on places of their day leased by the home (`stage_campaign::indices::late_on_leases`);
        // with a per-run limit too, on its home (the run reserves places at its scan, cut at
        // the plan's day, for users who come on the next).
        (Trigger::Scheduled(schedule), Assignment::Single | Assignment::ByProperty(_)) => {
            let limits = &campaign.limits;
            schedule.user_local.is_none() || limits.daily.is_none() || limits.per_run.is_none()
        }
        // A test whose users are sent at their local times ends at the last one's: each shard
        // reports its own with its test sent, the home waits for the latest
        // (`stage_campaign::shards`); its places, those of a total too, reserved at the scan
        // (`campaign::sample::reserves`); without a daily limit.
        (Trigger::Scheduled(schedule), Assignment::AbTest(_)) => {
            schedule.user_local.is_none() || campaign.limits.daily.is_none()
        }
        // Each shard's users take its range of the run's global assignment indices
        // (`stage_campaign::runs`); users sent at their local times after it take indices
        // leased alone (`stage_campaign::indices`), without a total, daily or per-run limit, or
        // with the leased places of the total or of their day, without a per-run limit (with
        // one and a daily limit: on its home, as one message).
        (Trigger::Scheduled(schedule), Assignment::Alternate | Assignment::Split(_)) => {
            let limits = &campaign.limits;
            schedule.user_local.is_none() || limits.daily.is_none() || limits.per_run.is_none()
        }
        // Total and daily limits are leased to the shards by the home
        // (`stage_campaign::leases`).
        (_, Assignment::Single | Assignment::ByProperty(_)) => true,
        // With them, the global assignment indices too; without them, places that carry the
        // indices alone, granted on demand (`stage_campaign::indices`).
        (_, Assignment::Alternate | Assignment::Split(_)) => true,
        // A triggered A/B test: its test users as global indices leased the same way, the
        // winner decided at home from every shard's counters (`stage_campaign::ab`).
        (_, Assignment::AbTest(test)) => matches!(test.test_audience, TestPopulation::Users(_)),
    };
    if supported {
        campaign.options.shards.max(1)
    } else {
        1
    }
}

/// The shard of `user` among `shards`.
pub fn of_user(user: &str, shards: u32) -> u32 {
    partition_for(user.as_bytes(), shards.max(1) as i32) as u32
}

/// The campaign-flow key of shard `shard` of campaign `campaign`.
pub fn key(campaign: &str, shard: u32) -> String {
    format!("{campaign}{SEPARATOR}{shard}")
}

/// The shard of `user` among `shards` for the records of `run` (a scheduled run's id, else a
/// trigger occurrence's or none): by the user's rank in the run where the run may take part of
/// its audience (see [`sample`]), else by the user.
pub fn of_run_user(campaign: &Campaign, run: Option<&str>, user: &str, shards: u32) -> u32 {
    match run.filter(|run| scheduled_run_time(run).is_some()) {
        Some(run) if sample::samples(campaign) => {
            sample::shard_of_rank(sample::rank(run, user), shards)
        }
        _ => of_user(user, shards),
    }
}

/// The campaign-flow key of a record about `user` in `run` (`None`: about the whole campaign).
pub fn flow_key(campaign: &Campaign, user: Option<&str>, run: Option<&str>) -> String {
    match (in_effect(campaign), user) {
        (shards, Some(user)) if shards > 1 => {
            key(&campaign.id, of_run_user(campaign, run, user, shards))
        }
        _ => campaign.id.clone(),
    }
}

/// [`flow_key`] of a record about `user` in the scheduled run `run` whose release was planned
/// over `released` shards (its scan's), `by_rank` where the run sampled its audience then (see
/// [`of_run_user`]; `None`: a user put off by an older version, by the rules in effect now).
///
/// A run that sampled holds its users' places at their rank's shard among `released`, whatever
/// an edit did since: a user who comes after the release goes there, on the shards in effect or
/// not (a rule put the campaign on its home, or `options.shards` was lowered: review s30
/// findings 1 and 2; a shard no longer in effect sends them on home, within the limits
/// there: `stage_campaign::placed`), and stays routed by rank when the per-run limit is taken
/// away (finding 3). A run that did not sample: home if the campaign samples now (a per-run
/// limit added since: the home counts the run's sends, finding 3), else the user's shard among
/// the fewer of `released` and the shards in effect, so a user who comes after an edit raised
/// `options.shards` goes to a shard that took part in the release and holds the run, never to
/// one added since, which knows nothing of it (review s29 finding 1); after an edit lowered
/// them, to one still in effect.
pub fn run_flow_key(
    campaign: &Campaign,
    user: &str,
    run: &str,
    released: u32,
    by_rank: Option<bool>,
) -> String {
    match by_rank {
        Some(true) if released > 1 => {
            key(&campaign.id, sample::shard_of_rank(sample::rank(run, user), released))
        }
        Some(true) => campaign.id.clone(),
        // A run that did not sample, of a campaign that does now (a per-run limit added
        // mid-run): its home counts the run's sends over its shards (their `RUN_SENT`) and
        // applies the limit to the users still to come, as one task does (finding 3).
        Some(false) if sample::samples(campaign) => campaign.id.clone(),
        Some(false) => match in_effect(campaign).min(released.max(1)) {
            shards if shards > 1 => key(&campaign.id, of_user(user, shards)),
            _ => campaign.id.clone(),
        },
        None => match in_effect(campaign).min(released.max(1)) {
            shards if shards > 1 => {
                key(&campaign.id, of_run_user(campaign, Some(run), user, shards))
            }
            _ => campaign.id.clone(),
        },
    }
}

/// The campaign-flow key of the answer (confirmation or skip) to `command`: the state that
/// counted it and holds its place, whatever the shards in effect now (an edit may have changed
/// them while it waited); by [`flow_key`] when it names none (an older command, or a shard the
/// campaign no longer has).
pub fn answer_key(campaign: &Campaign, command: &SendCommand) -> String {
    let ours = |key: &str| {
        scope(key.as_bytes(), campaign) != Scope::Foreign
            || named_shard(key.as_bytes(), campaign).is_some()
    };
    match command.place_key.as_deref() {
        Some(key) if ours(key) => key.to_string(),
        _ => flow_key(campaign, Some(&command.user_id), Some(&command.run_id)),
    }
}

/// The shard a canonical shard key of `campaign` names, in effect or not: an edit may have
/// taken it away (fewer `shards`, or its home alone) while it had places in flight, and the send
/// gate's answers to them still go there.
pub fn named_shard(key: &[u8], campaign: &Campaign) -> Option<u32> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(campaign.id.as_str())?;
    let shard = rest.strip_prefix(SEPARATOR)?.parse::<u32>().ok()?;
    let canonical = shard < u32::from(u16::MAX) && self::key(&campaign.id, shard).as_bytes() == key;
    canonical.then_some(shard)
}

/// Where a campaign-flow key sends a record about a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The campaign's home: the key is the campaign id.
    Home,
    /// One of its shards: the key is exactly [`key`] of a shard below the campaign's
    /// `options.shards` (above 1).
    Shard(u32),
    /// Any other key (a forged or garbled one, `c\u{1f}03`, `c\u{1f}+3`, a shard out of range):
    /// no state of the campaign lives there.
    Foreign,
}

/// What the campaign-flow key `key` names for `campaign` (see [`Scope`]).
pub fn scope(key: &[u8], campaign: &Campaign) -> Scope {
    if key == campaign.id.as_bytes() {
        return Scope::Home;
    }
    let shard = std::str::from_utf8(key)
        .ok()
        .and_then(|key| key.strip_prefix(campaign.id.as_str())?.strip_prefix(SEPARATOR))
        .and_then(|rest| rest.parse::<u32>().ok())
        .filter(|shard| campaign.options.shards > 1 && *shard < campaign.options.shards)
        .filter(|shard| self::key(&campaign.id, *shard).as_bytes() == key);
    shard.map_or(Scope::Foreign, Scope::Shard)
}

/// A campaign-flow record: about one user (to the user's shard) or the whole campaign (home).
pub trait FlowRecord {
    /// The user the record is about, if any.
    fn user(&self) -> Option<&str>;
    /// The run the record is about, if known (it decides the shard of a sampled run's users).
    fn run(&self) -> Option<&str> {
        None
    }

    /// The campaign-flow key of this record about `campaign` (see [`flow_key`]).
    fn route(&self, campaign: &Campaign) -> String {
        flow_key(campaign, self.user(), self.run())
    }
}

impl FlowRecord for Candidate {
    fn user(&self) -> Option<&str> {
        Some(&self.user_id)
    }

    fn run(&self) -> Option<&str> {
        Some(&self.run_id)
    }
}

impl FlowRecord for SendConfirmed {
    fn user(&self) -> Option<&str> {
        Some(&self.user_id)
    }

    fn run(&self) -> Option<&str> {
        Some(&self.run_id)
    }
}

impl FlowRecord for Skip {
    fn user(&self) -> Option<&str> {
        Some(&self.user_id)
    }

    fn run(&self) -> Option<&str> {
        self.run_id.as_deref()
    }
}

/// An engagement names no run: it goes to the user's shard (clicks count wherever they land, as
/// the home merges every shard's counters).
impl FlowRecord for Engagement {
    fn user(&self) -> Option<&str> {
        Some(&self.user_id)
    }
}

impl FlowRecord for RunTally {
    fn user(&self) -> Option<&str> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(id: &str, shards: u32) -> Campaign {
        let yaml = format!(
            "id: {id}\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\noptions: {{ shards: {shards} }}\n"
        );
        crate::campaign::parse::parse_campaign(&yaml, "test").expect("a valid campaign")
    }

    #[test]
    fn only_canonical_keys_of_a_shard_in_range_name_a_shard() {
        let spring = campaign("spring", 4);
        assert_eq!(scope(key("spring", 3).as_bytes(), &spring), Scope::Shard(3));
        assert_eq!(scope(b"spring", &spring), Scope::Home);
        assert_eq!(scope(key("spring", 3).as_bytes(), &campaign("spr", 4)), Scope::Foreign);
        for forged in ["spring\x1fx", "spring\x1f+3", "spring\x1f03", "spring\x1f4", "spring\x1f"] {
            assert_eq!(scope(forged.as_bytes(), &spring), Scope::Foreign, "{forged:?}");
        }
        assert_eq!(scope(key("spring", 0).as_bytes(), &campaign("spring", 1)), Scope::Foreign);
    }

    /// FX13: a late user of a run goes where the run's release put their place, whatever an
    /// edit changed since; a timer without `by_rank` (an older version's) as before.
    #[test]
    fn a_late_user_of_a_run_goes_where_its_release_put_their_place() {
        let local = |limits: &str, shards: u32| {
            let yaml = format!(
                "id: t\napp: shop\nname: n\nwhen:\n  schedule: {{ repeat: weekly, days: [fri], time: \"09:00\", timezone: user }}\nwhat: {{ title: t, body: b }}\nlimits: {limits}\noptions: {{ shards: {shards} }}\n"
            );
            crate::campaign::parse::parse_campaign(&yaml, "test").expect("a valid campaign")
        };
        let run = "run-1795114800000";
        let users: Vec<String> = (0..200).map(|n| format!("u{n}")).collect();
        let ranked: Vec<String> = users
            .iter()
            .map(|user| key("t", sample::shard_of_rank(sample::rank(run, user), 8)))
            .collect();
        // Sampled at the release over 8: at their rank's shard of the 8, on its home now (a
        // daily limit added), over 2 (lowered), or without the per-run limit.
        for now in
            [local("{ per_run: 100, daily: 50 }", 8), local("{ per_run: 100 }", 2), local("{}", 8)]
        {
            for (user, ranked) in users.iter().zip(&ranked) {
                assert_eq!(&run_flow_key(&now, user, run, 8, Some(true)), ranked);
            }
        }
        // Not sampled at the release: home when it samples now (per-run limit added), else by
        // the user among the fewer shards.
        let (added, none) = (local("{ per_run: 100 }", 8), local("{}", 8));
        assert!(users.iter().all(|u| run_flow_key(&added, u, run, 8, Some(false)) == "t"));
        for user in &users {
            assert_eq!(run_flow_key(&none, user, run, 4, Some(false)), key("t", of_user(user, 4)));
            // An older version's timer: by the rules in effect now.
            assert_eq!(
                run_flow_key(&added, user, run, 4, None),
                flow_key(&local("{ per_run: 100 }", 4), Some(user), Some(run))
            );
        }
        assert_eq!(run_flow_key(&none, "u1", run, 1, Some(true)), "t", "released on its home");
    }

    #[test]
    fn users_spread_over_every_shard() {
        let mut seen = [0u32; 4];
        for n in 0..1_000 {
            seen[of_user(&format!("u{n}"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|count| *count > 150), "{seen:?}");
        assert_eq!(of_user("anyone", 1), 0);
    }
}
