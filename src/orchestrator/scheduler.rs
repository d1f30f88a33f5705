//! Which queued trial starts next, and on which device slots. Pure bookkeeping, no processes.
//!
//! Trials start in plan order. When the head of the queue needs more slots than are free, later
//! trials that fit may start in the idle slots (packing), but only a bounded number of times
//! (the pool's size) while that head waits; then nothing else starts until it fits, so a large
//! trial is never starved by a stream of small ones. Refused trials never enter the queue, so the
//! head always fits in the end.

use std::collections::VecDeque;

#[derive(Debug)]
pub struct Scheduler {
    free: Vec<bool>,
    /// (trial id, slots needed), in start order.
    queue: VecDeque<(usize, usize)>,
    running: usize,
    parallel: usize,
    /// How often trials behind the head started before it while it waited.
    head_overtaken: usize,
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
            head_overtaken: 0,
        }
    }

    /// The head of the queue may be overtaken this many times while it waits for free slots;
    /// then nothing else starts until it does. Packing small trials into idle slots keeps the
    /// pool busy; the bound keeps a large trial from waiting forever behind a stream of small ones.
    fn overtake_limit(&self) -> usize {
        self.free.len()
    }

    /// The next trial to start now and the slot indices it gets, if one can start.
    pub fn next_to_start(&mut self) -> Option<(usize, Vec<usize>)> {
        if self.running >= self.parallel {
            return None;
        }
        let free_count = self.free.iter().filter(|f| **f).count();
        let &(_, head_need) = self.queue.front()?;
        let pick = if head_need <= free_count {
            self.head_overtaken = 0;
            0
        } else if self.head_overtaken < self.overtake_limit() {
            let later = self
                .queue
                .iter()
                .position(|(_, need)| *need <= free_count)?;
            self.head_overtaken += 1;
            later
        } else {
            return None;
        };
        let (id, need) = self.queue.remove(pick)?;
        let slots: Vec<usize> = (0..self.free.len())
            .filter(|i| self.free[*i])
            .take(need)
            .collect();
        for i in &slots {
            self.free[*i] = false;
        }
        self.running += 1;
        Some((id, slots))
    }

    /// Takes a queued trial out of the queue as running now, on free slots (a trial a resumed
    /// sweep re-attached to instead of starting it again). None when it is not queued.
    pub fn take(&mut self, id: usize) -> Option<Vec<usize>> {
        let pos = self.queue.iter().position(|(q, _)| *q == id)?;
        let (_, need) = self.queue.remove(pos)?;
        let slots: Vec<usize> = (0..self.free.len())
            .filter(|i| self.free[*i])
            .take(need)
            .collect();
        for i in &slots {
            self.free[*i] = false;
        }
        self.running += 1;
        Some(slots)
    }

    /// A trial ended; its slots are free again.
    pub fn release(&mut self, slots: &[usize]) {
        for i in slots {
            self.free[*i] = true;
        }
        self.running = self.running.saturating_sub(1);
    }

    /// Puts a trial back at the head of the queue (a retry: it has waited its turn already).
    pub fn requeue_front(&mut self, id: usize, need: usize) {
        self.queue.push_front((id, need));
    }

    /// Adds a trial at the end of the queue (one a sampler proposed while the sweep runs).
    pub fn enqueue(&mut self, id: usize, need: usize) {
        self.queue.push_back((id, need));
    }

    /// Trials started and not yet released.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Drops every trial not yet started (on interrupt).
    pub fn clear_queue(&mut self) -> Vec<usize> {
        self.queue.drain(..).map(|(id, _)| id).collect()
    }

    /// The trial at the head of the queue: the one most likely to start next.
    pub fn head(&self) -> Option<usize> {
        self.queue.front().map(|&(id, _)| id)
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
    fn packs_small_trials_beside_a_waiting_large_one_but_never_starves_it() {
        // Pool of 4; trial 3 needs all 4 slots, behind it a stream of 1-slot trials.
        let mut s = Scheduler::new(
            4,
            4,
            [
                (1, 1),
                (2, 1),
                (3, 4),
                (4, 1),
                (5, 1),
                (6, 1),
                (7, 1),
                (8, 1),
                (9, 1),
            ],
        );
        assert_eq!(s.next_to_start(), Some((1, vec![0])));
        assert_eq!(s.next_to_start(), Some((2, vec![1])));
        // Trial 3 cannot start; small trials fill the idle slots (packing)...
        assert_eq!(s.next_to_start(), Some((4, vec![2])));
        assert_eq!(s.next_to_start(), Some((5, vec![3])));
        assert_eq!(s.next_to_start(), None, "the pool is full");
        // ...and keep overtaking as slots free up, at most 4 times in all.
        s.release(&[0]);
        assert_eq!(s.next_to_start(), Some((6, vec![0])));
        s.release(&[1]);
        assert_eq!(s.next_to_start(), Some((7, vec![1])));
        // The bound is reached: freed slots now wait for trial 3.
        s.release(&[0]);
        assert_eq!(s.next_to_start(), None);
        s.release(&[1]);
        s.release(&[2]);
        assert_eq!(s.next_to_start(), None);
        s.release(&[3]);
        assert_eq!(s.next_to_start(), Some((3, vec![0, 1, 2, 3])));
        s.release(&[0, 1, 2, 3]);
        assert_eq!(s.next_to_start(), Some((8, vec![0])));
        assert_eq!(s.next_to_start(), Some((9, vec![1])));
        s.release(&[0]);
        s.release(&[1]);
        assert!(s.is_idle());
    }

    #[test]
    fn a_reattached_trial_is_taken_out_of_the_queue_as_running() {
        let mut s = Scheduler::new(4, 2, [(1, 2), (2, 1), (3, 1)]);
        assert_eq!(s.take(2), Some(vec![0]));
        assert_eq!(s.take(2), None);
        assert_eq!(s.next_to_start(), Some((1, vec![1, 2])));
        assert_eq!(s.next_to_start(), None, "parallel 2 counts the taken one");
        s.release(&[0]);
        assert_eq!(s.next_to_start(), Some((3, vec![0])));
    }

    #[test]
    fn parallel_caps_running_trials() {
        let mut s = Scheduler::new(8, 2, (1..=5).map(|i| (i, 1)));
        assert!(s.next_to_start().is_some());
        assert!(s.next_to_start().is_some());
        assert_eq!(s.next_to_start(), None);
        assert_eq!(s.queued(), 3);
    }
}
