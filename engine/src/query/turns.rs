//! One engine instance's turns at query work: at most one task starts a slice of query work per
//! loop pass (a pass is one wall-clock `now`, shared by every task the loop ticks in it), the
//! tasks that want work taking turns round-robin, so an instance spends one slice per pass on
//! queries however many tasks it runs.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use crate::runtime::TaskId;

/// A task that has not asked for a turn for this long is forgotten (it moved, or its queries
/// were cancelled), so it never holds up the others' turns.
const FORGET_AFTER_MS: i64 = 1_000;

/// The turns of one instance's tasks; share one (`Arc`) among all the tasks of an instance.
#[derive(Debug, Default)]
pub struct QueryTurns {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The tasks that want query work, with when each last asked.
    wanting: BTreeMap<TaskId, i64>,
    /// The task that had the last turn.
    last: Option<TaskId>,
    /// The pass (its `now`) in which the last turn was given.
    given_at_ms: Option<i64>,
}

impl QueryTurns {
    /// A new set of turns, to share among the tasks of one instance.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether `task`, wanting query work in the pass at `now_ms`, may start a slice now: no
    /// other task had a turn in this pass, and it is the next wanting task after the last one
    /// served. A task denied stays in line until it [`Self::leaves`].
    pub fn ask(&self, task: TaskId, now_ms: i64) -> bool {
        let mut state = self.state.lock().expect("query turns lock");
        state.wanting.insert(task, now_ms);
        state.wanting.retain(|_, asked| now_ms - *asked < FORGET_AFTER_MS);
        if state.given_at_ms == Some(now_ms) {
            return false;
        }
        let next = match state.last {
            Some(last) => state
                .wanting
                .range(last..)
                .find(|(t, _)| **t != last)
                .or_else(|| state.wanting.iter().next()),
            None => state.wanting.iter().next(),
        };
        if next.map(|(t, _)| *t) != Some(task) {
            return false;
        }
        state.last = Some(task);
        state.given_at_ms = Some(now_ms);
        true
    }

    /// `task` has no query work left: out of line.
    pub fn leaves(&self, task: TaskId) {
        self.state.lock().expect("query turns lock").wanting.remove(&task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(partition: i32) -> TaskId {
        TaskId { sub_topology: 0, partition }
    }

    /// Every task of a pass asks, in the loop's order; returns who got the turn.
    fn pass(turns: &QueryTurns, now_ms: i64, tasks: &[i32]) -> Vec<i32> {
        tasks.iter().copied().filter(|p| turns.ask(task(*p), now_ms)).collect()
    }

    #[test]
    fn one_task_per_pass_round_robin() {
        let turns = QueryTurns::default();
        let all = [0, 1, 2, 3];
        let served: Vec<Vec<i32>> = (0..6).map(|n| pass(&turns, 10 * (n + 1), &all)).collect();
        assert_eq!(served, vec![vec![0], vec![1], vec![2], vec![3], vec![0], vec![1]]);
    }

    #[test]
    fn a_task_that_leaves_or_stops_asking_gives_its_turns_to_the_others() {
        let turns = QueryTurns::default();
        assert_eq!(pass(&turns, 10, &[0, 1, 2]), vec![0]);
        turns.leaves(task(1));
        assert_eq!(pass(&turns, 20, &[0, 2]), vec![2]);
        assert_eq!(pass(&turns, 30, &[0, 2]), vec![0]);
        // Task 2 moved away without leaving: forgotten after a second, task 0 goes on alone.
        assert_eq!(pass(&turns, 40, &[0]), Vec::<i32>::new());
        assert_eq!(pass(&turns, 40 + FORGET_AFTER_MS, &[0]), vec![0]);
        assert_eq!(pass(&turns, 50 + FORGET_AFTER_MS, &[0]), vec![0]);
    }
}
