//! A/B tests and split delivery: deterministic assignment, test groups, winner selection.
//!
//! A triggered A/B test of `N` users numbers its places `0..N` ("slots") and gives each of the
//! `P` user-stage partitions an equal share in a range of its own (partition 0 the first
//! `⌈N/P⌉` or `⌊N/P⌋`, and so on): partition `p`'s `k`-th user to qualify takes its range's
//! `k`-th slot, with variant `slot mod variants` (so the variants alternate within each
//! partition and are exact overall). Every partition has its share of the test whenever its
//! users come (a partition that lags behind is tested as much as the others); users beyond
//! their partition's share wait for the winner and get it. The test is complete, and its
//! evaluation starts, when every slot is taken.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    is_held, queue, timer_key, CampaignStage, CampaignState, ProcessError, RUN_BUFFER, RUN_TIMER,
};
pub use crate::campaign::TestPopulation;
use crate::{
    campaign::{AbTest, Assignment, Campaign, CampaignStatus},
    model::Candidate,
    runtime::ProcessorContext,
};

/// The variant for the `n`-th user (0-based) of a test: strict alternation A, B, C, A, B, C, …
pub fn alternate(n: u64, variants: usize) -> usize {
    (n % variants.max(1) as u64) as usize
}

/// The slot of partition `partition`'s next test user (after `taken` of its own) in a test of
/// `audience` users over `partitions` partitions, while the partition's share is not full.
/// Shares are equal (the first `audience mod partitions` partitions have one more) and in
/// consecutive ranges: partition 0's slots first.
pub fn slot(audience: u64, partition: u32, partitions: u32, taken: u64) -> Option<u64> {
    let (p, parts) = (u64::from(partition), u64::from(partitions.max(1)));
    let (base, extra) = (audience / parts, audience % parts);
    let share = base + u64::from(p < extra);
    (p < parts && taken < share).then(|| p * base + p.min(extra) + taken)
}

/// A triggered A/B test at its campaign's home: the slots taken per user-stage partition and
/// the users waiting for the winner (in the run buffer, see [`waiting_owner`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TriggeredTest {
    /// The user-stage partitions the slots are numbered over, from the first test user's
    /// candidate (0: none yet).
    partitions: u32,
    /// Test users so far, by partition.
    taken: BTreeMap<u32, u64>,
    /// Users waiting for the winner.
    waiting: u64,
    /// The number the next waiting user takes (their order in the queue).
    waiting_seq: u64,
}

impl TriggeredTest {
    /// Whether users wait for the winner.
    pub(super) fn waits(&self) -> bool {
        self.waiting > 0
    }

    /// The partition `candidate` came from, among the test's partitions (fixed by its first
    /// user; a candidate that names none counts as partition 0).
    fn partition(&mut self, candidate: &Candidate) -> u32 {
        let (partition, partitions) = candidate.source.map_or((0, 1), |source| {
            (source.partition.max(0) as u32, source.partitions.max(1) as u32)
        });
        if self.partitions == 0 {
            self.partitions = partitions;
        }
        partition % self.partitions
    }

    /// Test users over every partition.
    fn tested(&self) -> u64 {
        self.taken.values().sum()
    }
}

/// The owner, in the run buffer, of the users of the state kept under `key` that wait for the
/// winner (a prefix no scheduled run's buffer has).
fn waiting_owner(key: &str) -> String {
    format!("{key}\u{0}ab-test")
}

/// The test population of `campaign`'s triggered A/B test while it is on (active, no winner).
fn test_audience(campaign: &Campaign, state: &CampaignState) -> Option<u64> {
    match &campaign.assignment {
        Assignment::AbTest(AbTest { test_audience: TestPopulation::Users(audience), .. })
            if state.winner_id.is_none() && campaign.status == CampaignStatus::Active =>
        {
            Some(*audience)
        }
        _ => None,
    }
}

impl CampaignStage {
    /// A candidate of a trigger: while the campaign's A/B test is on, a user of a partition
    /// with a free slot takes it (and its variant), any other waits for the winner; else it is
    /// delivered as it comes.
    pub(super) fn place_triggered(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: Candidate,
    ) -> Result<(), ProcessError> {
        let Some(audience) = test_audience(campaign, state) else {
            if state.ab_test.waits() {
                // The test ended without a winner's timer (an edit removed it, a stop).
                ctx.schedule(ctx.now_ms(), &timer_key(RUN_TIMER, &state.key))?;
            }
            return self.deliver(ctx, campaign, state, &candidate, None);
        };
        let sticky_key = super::assignment_key(&state.key, &candidate.user_id);
        if Self::sticky(ctx, campaign, &sticky_key)?.is_some() {
            return self.deliver(ctx, campaign, state, &candidate, None); // a tested user again
        }
        let partition = state.ab_test.partition(&candidate);
        let taken = state.ab_test.taken.get(&partition).copied().unwrap_or(0);
        let Some(slot) = slot(audience, partition, state.ab_test.partitions, taken) else {
            let owner = waiting_owner(&state.key);
            let key = queue::key(&owner, state.ab_test.waiting_seq);
            ctx.store(RUN_BUFFER)?.put_as(&key, &candidate)?;
            state.ab_test.waiting_seq += 1;
            state.ab_test.waiting += 1;
            return Ok(());
        };
        let assigned = state.assigned;
        let at = candidate.qualified_at_ms;
        self.deliver(ctx, campaign, state, &candidate, Some(alternate(slot, campaign.what.len())))?;
        // The slot is taken once the user got its variant (not when a limit turned them away).
        if state.assigned > assigned {
            *state.ab_test.taken.entry(partition).or_default() += 1;
            if state.ab_test.tested() >= audience && state.test_full_at.is_none() {
                self.start_evaluation(ctx, campaign, state, at)?;
            }
        }
        Ok(())
    }

    /// Once the test is over (a winner, an edit, a stop), the users who waited for it leave in
    /// steps, timed when they leave; the next step follows on the run timer.
    pub(super) fn release_test_waiting(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        if !state.ab_test.waits() || test_audience(campaign, state).is_some() || is_held(campaign) {
            return Ok(());
        }
        let step = queue::next_step(ctx, RUN_BUFFER, &waiting_owner(&state.key))?;
        state.ab_test.waiting = state.ab_test.waiting.saturating_sub(step.unreadable);
        let now = ctx.effective_ms();
        for (key, candidate) in step.entries {
            ctx.store(RUN_BUFFER)?.delete(&key)?;
            state.ab_test.waiting = state.ab_test.waiting.saturating_sub(1);
            let leaving =
                Candidate { qualified_at_ms: candidate.qualified_at_ms.max(now), ..candidate };
            self.place(ctx, campaign, state, leaving)?;
        }
        if step.more {
            ctx.schedule(ctx.now_ms(), &timer_key(RUN_TIMER, &state.key))?;
        }
        Ok(())
    }
}

/// Deterministic weighted round robin (the "smooth" variant): over any run of assignments the
/// counts stay within one of the exact proportions, with no coin flips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitDelivery {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl SplitDelivery {
    /// Splits by `percentages` (any positive weights; they need not sum to 100).
    pub fn new(percentages: &[u32]) -> Self {
        let weights: Vec<i64> = percentages.iter().map(|p| i64::from(*p)).collect();
        Self { current: vec![0; weights.len()], weights }
    }

    /// Continues a split from a saved [`SplitDelivery::state`].
    pub fn resume(percentages: &[u32], state: Vec<i64>) -> Self {
        let mut split = Self::new(percentages);
        if state.len() == split.current.len() {
            split.current = state;
        }
        split
    }

    /// The position to save and [`SplitDelivery::resume`] from.
    pub fn state(&self) -> &[i64] {
        &self.current
    }

    /// The variant of the next user.
    pub fn next_variant(&mut self) -> usize {
        let total: i64 = self.weights.iter().sum();
        for (current, weight) in self.current.iter_mut().zip(&self.weights) {
            *current += weight;
        }
        let (best, _) = self
            .current
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
            .expect("at least one variant");
        self.current[best] -= total;
        best
    }
}

/// How a scheduled audience is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestPlan {
    /// Users per variant in the test.
    pub per_variant: u64,
    /// Users who get the winner afterwards.
    pub remainder: u64,
}

/// Divides `reach` users: equal test groups (rounded down), the rest for the winner.
pub fn test_plan(reach: u64, population: TestPopulation, variants: usize) -> TestPlan {
    let test = match population {
        TestPopulation::Percent(p) => ((reach as f64) * p / 100.0).floor() as u64,
        TestPopulation::Users(n) => n,
    }
    .min(reach);
    let per_variant = test / variants.max(1) as u64;
    TestPlan { per_variant, remainder: reach - per_variant * variants as u64 }
}

/// What a variant achieved in the test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VariantResult {
    /// Notifications sent.
    pub sent: u64,
    /// Clicks.
    pub clicks: u64,
}

/// How the winner is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WinnerRule {
    /// The most clicks.
    MostClicks,
    /// The highest click-through rate, reported with the p-value of a chi-squared test of
    /// independence (for two variants, the two-proportion z-test).
    ClickThroughRate,
}

/// The chosen variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Winner {
    /// Index of the variant.
    pub variant: usize,
    /// p-value of the difference, with [`WinnerRule::ClickThroughRate`].
    pub p_value: Option<f64>,
}

/// Picks the winner. Ties go to the variant listed first (A before B before C), so a test
/// without a difference keeps the original message.
pub fn pick_winner(results: &[VariantResult], rule: WinnerRule) -> Winner {
    let rate = |r: &VariantResult| if r.sent == 0 { 0.0 } else { r.clicks as f64 / r.sent as f64 };
    let better = |a: &VariantResult, b: &VariantResult| match rule {
        WinnerRule::MostClicks => a.clicks > b.clicks,
        WinnerRule::ClickThroughRate => rate(a) > rate(b),
    };
    let mut best = 0;
    for (i, result) in results.iter().enumerate().skip(1) {
        if better(result, &results[best]) {
            best = i;
        }
    }
    let p_value = (rule == WinnerRule::ClickThroughRate).then(|| chi_squared_p_value(results));
    Winner { variant: best, p_value }
}

/// p-value of Pearson's chi-squared test that click-through does not depend on the variant
/// (clicked / not clicked × variants). Degrees of freedom k − 1 ∈ {1, 2} have closed forms.
fn chi_squared_p_value(results: &[VariantResult]) -> f64 {
    let sent: f64 = results.iter().map(|r| r.sent as f64).sum();
    let clicks: f64 = results.iter().map(|r| r.clicks as f64).sum();
    if sent == 0.0 || clicks == 0.0 || clicks == sent || results.len() < 2 {
        return 1.0;
    }
    let mut statistic = 0.0;
    for r in results.iter().filter(|r| r.sent > 0) {
        let n = r.sent as f64;
        for (observed, share) in
            [(r.clicks as f64, clicks / sent), ((r.sent - r.clicks) as f64, 1.0 - clicks / sent)]
        {
            let expected = n * share;
            statistic += (observed - expected).powi(2) / expected;
        }
    }
    match results.len() - 1 {
        1 => erfc((statistic / 2.0).sqrt()),
        _ => (-statistic / 2.0).exp(), // df = 2; more variants are not allowed
    }
}

/// Complementary error function (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7),
/// hand-written because the standard library has none.
fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let value = poly * (-x * x).exp();
    if x >= 0.0 {
        value
    } else {
        2.0 - value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_million_reach_15_percent_3_variants_gives_100000_each() {
        let plan = test_plan(2_000_000, TestPopulation::Percent(15.0), 3);
        assert_eq!(plan, TestPlan { per_variant: 100_000, remainder: 1_700_000 });
        // Scaled down proportionally.
        assert_eq!(
            test_plan(20_000, TestPopulation::Percent(15.0), 3),
            TestPlan { per_variant: 1_000, remainder: 17_000 }
        );
        assert_eq!(
            test_plan(1_000, TestPopulation::Users(500), 2),
            TestPlan { per_variant: 250, remainder: 500 }
        );
    }

    #[test]
    fn each_partition_has_an_equal_share_of_the_slots_in_a_range_of_its_own() {
        // 10 slots over 4 partitions: 0-2 | 3-5 | 6-7 | 8-9.
        let slots = |p: u32| (0..).map_while(|k| slot(10, p, 4, k)).collect::<Vec<u64>>();
        let all: Vec<Vec<u64>> = (0..4).map(slots).collect();
        assert_eq!(all, [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7], vec![8, 9]]);
        // More partitions than test users: the highest have no share.
        assert_eq!(slot(3, 3, 4, 0), None);
        assert_eq!(slot(3, 2, 4, 0), Some(2));
        assert_eq!(slot(u64::MAX, 1, 4, u64::MAX), None, "no overflow");
        // Variants alternate within a partition and are exact overall (7 users, 3 partitions,
        // 2 variants: A B A | B A | B A → 4 A, 3 B).
        let variants: Vec<usize> = (0..3)
            .flat_map(|p| (0..).map_while(move |k| slot(7, p, 3, k)))
            .map(|slot| alternate(slot, 2))
            .collect();
        assert_eq!(variants, [0, 1, 0, 1, 0, 1, 0]);
    }

    #[test]
    fn alternation_is_strict() {
        let assigned: Vec<usize> = (0..7).map(|n| alternate(n, 3)).collect();
        assert_eq!(assigned, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn split_delivery_keeps_exact_proportions_at_every_point() {
        let mut split = SplitDelivery::new(&[50, 30, 20]);
        let mut counts = [0u64; 3];
        for sent in 1..=1_000u64 {
            counts[split.next_variant()] += 1;
            for (count, share) in counts.iter().zip([0.5, 0.3, 0.2]) {
                let exact = sent as f64 * share;
                assert!((*count as f64 - exact).abs() < 1.0 + 1e-9, "after {sent}: {counts:?}");
            }
        }
        assert_eq!(counts, [500, 300, 200]);
    }

    #[test]
    fn most_clicks_wins_and_ties_go_to_the_first_variant() {
        let results =
            [VariantResult { sent: 250, clicks: 10 }, VariantResult { sent: 250, clicks: 30 }];
        assert_eq!(
            pick_winner(&results, WinnerRule::MostClicks),
            Winner { variant: 1, p_value: None }
        );
        let tie =
            [VariantResult { sent: 250, clicks: 20 }, VariantResult { sent: 250, clicks: 20 }];
        assert_eq!(pick_winner(&tie, WinnerRule::MostClicks).variant, 0);
    }

    #[test]
    fn ctr_winner_reports_a_p_value() {
        // 4% vs 12% over 250 each: a clear difference.
        let clear =
            [VariantResult { sent: 250, clicks: 10 }, VariantResult { sent: 250, clicks: 30 }];
        let winner = pick_winner(&clear, WinnerRule::ClickThroughRate);
        assert_eq!(winner.variant, 1);
        let p = winner.p_value.unwrap();
        // chi² = 10.87 with 1 df → p ≈ 0.00098.
        assert!((p - 0.00098).abs() < 0.0002, "{p}");
        // No difference: p = 1.
        let same =
            [VariantResult { sent: 100, clicks: 10 }, VariantResult { sent: 100, clicks: 10 }];
        assert!(
            (pick_winner(&same, WinnerRule::ClickThroughRate).p_value.unwrap() - 1.0).abs() < 1e-6
        );
        // Three variants (df = 2).
        let three = [
            VariantResult { sent: 100, clicks: 10 },
            VariantResult { sent: 100, clicks: 10 },
            VariantResult { sent: 100, clicks: 25 },
        ];
        let winner = pick_winner(&three, WinnerRule::ClickThroughRate);
        assert_eq!(winner.variant, 2);
        assert!(winner.p_value.unwrap() < 0.01);
    }

    #[test]
    fn erfc_matches_reference_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-6);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-6);
    }
}
