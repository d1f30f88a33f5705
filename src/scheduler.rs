//! Which queued trial starts next, and on which device slots. Pure bookkeeping, no processes.
//!
//! Trials start in plan order. The head of the queue is never overtaken: when it needs more free
//! slots than there are, nothing else starts until it fits, so a large trial cannot be starved
//! by a stream of small ones. Refused trials never enter the queue, so the head always fits in
//! the end.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct Scheduler {
    free: Vec<bool>,
    queue: VecDeque<(usize, usize)>,
    running: usize,
    parallel: usize,
}

impl Scheduler {
    /// `trials` are (id, slots needed), in the order they should start.
    pub fn new(
        slots: usize,
        parallel: usize,
        trials: impl IntoIterator<Item = (usize, usize)>,
    ) -> Self {
        Self {
            free: vec![true; slots],
            queue: trials.into_iter().collect(),
            running: 0,
            parallel: parallel.max(1),
        }
    }

    /// The next trial to start now and the slot indices it gets, if one can start.
    pub fn next(&mut self) -> Option<(usize, Vec<usize>)> {
        if self.running >= self.parallel {
            return None;
        }
        let &(id, need) = self.queue.front()?;
        let free: Vec<usize> = (0..self.free.len())
            .filter(|i| self.free[*i])
            .take(need)
            .collect();
        if free.len() < need {
            return None;
        }
        self.queue.pop_front();
        for i in &free {
            self.free[*i] = false;
        }
        self.running += 1;
        Some((id, free))
    }

    /// A trial ended; its slots are free again.
    pub fn release(&mut self, slots: &[usize]) {
        for i in slots {
            self.free[*i] = true;
        }
        self.running = self.running.saturating_sub(1);
    }

    /// Drops every trial not yet started (on interrupt).
    pub fn clear_queue(&mut self) -> Vec<usize> {
        self.queue.drain(..).map(|(id, _)| id).collect()
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.running == 0
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respects_parallel_and_slots_and_never_overtakes_the_head() {
        let mut s = Scheduler::new(4, 3, [(1, 1), (2, 1), (3, 4), (4, 1)]);
        assert_eq!(s.next(), Some((1, vec![0])));
        assert_eq!(s.next(), Some((2, vec![1])));
        // Trial 3 needs all four slots; trial 4 must wait behind it.
        assert_eq!(s.next(), None);
        s.release(&[0]);
        assert_eq!(s.next(), None);
        s.release(&[1]);
        assert_eq!(s.next(), Some((3, vec![0, 1, 2, 3])));
        assert_eq!(s.next(), None);
        s.release(&[0, 1, 2, 3]);
        assert_eq!(s.next(), Some((4, vec![0])));
        s.release(&[0]);
        assert!(s.is_idle());
    }

    #[test]
    fn parallel_caps_running_trials() {
        let mut s = Scheduler::new(8, 2, (1..=5).map(|i| (i, 1)));
        assert!(s.next().is_some());
        assert!(s.next().is_some());
        assert_eq!(s.next(), None);
        assert_eq!(s.queued(), 3);
    }
}
