//! gRFC A58's static stride scheduler: weights scaled to 16 bits, a
//! sequence number per pick, no lock and no per-pick search.

use crate::balancer::round_robin::Rotation;

/// The largest scaled weight.
const MAX_WEIGHT: u64 = u16::MAX as u64;

/// Picks indices in proportion to weights (or in turn).
#[derive(Debug)]
pub(crate) struct Scheduler {
    /// Scaled weights; empty means plain round robin.
    weights: Box<[u16]>,
    len: usize,
}

impl Scheduler {
    /// A scheduler over `weights` as A58 makes it: with fewer than two
    /// non-zero weights, or all scaled weights equal, plain round robin;
    /// else weights scaled so the largest is 65535, a zero weight (no
    /// valid weight) taking the mean of the others.
    pub(crate) fn new(weights: &[f64]) -> Scheduler {
        let len = weights.len();
        let round_robin = Scheduler {
            weights: Box::new([]),
            len,
        };
        let valid: Vec<f64> = weights.iter().copied().filter(|w| *w > 0.0).collect();
        if valid.len() < 2 {
            return round_robin;
        }
        let max = valid.iter().copied().fold(0.0, f64::max);
        let scale = MAX_WEIGHT as f64 / max;
        let mean = (scale * valid.iter().sum::<f64>() / valid.len() as f64).round() as u16;
        let scaled: Box<[u16]> = weights
            .iter()
            .map(|&w| {
                if w > 0.0 {
                    ((scale * w).round() as u16).max(1)
                } else {
                    mean.max(1)
                }
            })
            .collect();
        if scaled.iter().all(|&w| w == scaled[0]) {
            return round_robin;
        }
        Scheduler {
            weights: scaled,
            len,
        }
    }

    /// The next index in `0..len`, advancing the calling thread's counter
    /// of `rotation`. A backend of scaled weight `w` is taken in `w` of
    /// every 65535 generations, its slots offset by half a range from its
    /// neighbour's; the heaviest is taken every generation, so this ends
    /// within `len` steps (bounded here at 4·len, then round robin).
    #[inline]
    pub(crate) fn next(&self, rotation: &Rotation) -> usize {
        if self.weights.is_empty() {
            return rotation.next(self.len);
        }
        let n = self.len as u64;
        for _ in 0..4 * n {
            // The raw sequence (mod usize::MAX, far beyond any generation).
            let seq = rotation.next(usize::MAX) as u64;
            let (index, generation) = (seq % n, seq / n);
            let weight = u64::from(self.weights[index as usize]);
            let offset = MAX_WEIGHT / 2 * index;
            if (weight * generation + offset) % MAX_WEIGHT >= MAX_WEIGHT - weight {
                return index as usize;
            }
        }
        rotation.next(self.len)
    }

    /// The scaled weights (empty for round robin).
    #[cfg(test)]
    pub(crate) fn weights(&self) -> &[u16] {
        &self.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::round_robin::SHARDS;

    fn counts(scheduler: &Scheduler, picks: usize) -> Vec<usize> {
        let rotation = Rotation::new([0; SHARDS]);
        let mut counts = vec![0; scheduler.len];
        for _ in 0..picks {
            counts[scheduler.next(&rotation)] += 1;
        }
        counts
    }

    #[test]
    fn picks_follow_the_weights() {
        let scheduler = Scheduler::new(&[1.0, 2.0, 3.0]);
        assert_eq!(scheduler.weights(), [21845, 43690, 65535]);
        let got = counts(&scheduler, 60_000);
        for (count, want) in got.iter().zip([10_000.0, 20_000.0, 30_000.0]) {
            assert!((*count as f64 - want).abs() / want < 0.01, "{got:?}");
        }
    }

    #[test]
    fn equal_or_too_few_weights_are_plain_round_robin() {
        for weights in [&[2.0, 2.0, 2.0][..], &[5.0, 0.0, 0.0], &[0.0, 0.0], &[3.0]] {
            let scheduler = Scheduler::new(weights);
            assert!(scheduler.weights().is_empty(), "{weights:?}");
            let got = counts(&scheduler, 300);
            assert!(got.iter().all(|&c| c == 300 / weights.len()), "{got:?}");
        }
    }

    #[test]
    fn a_backend_without_a_weight_gets_the_mean() {
        let scheduler = Scheduler::new(&[1.0, 3.0, 0.0]);
        assert_eq!(scheduler.weights(), [21845, 65535, 43690]);
    }
}
