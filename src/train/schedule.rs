//! Learning-rate schedules: linear warmup from 0 to the peak, then `cosine`
//! decay to 0, `linear` decay to 0, or `constant` at the peak. The values are
//! those of Hugging Face's `get_{cosine,linear,constant}_schedule_with_warmup`,
//! indexed the same way: `lr(s)` is the rate of the update made after `s`
//! updates, so with warmup the first update (s = 0) has rate 0.

use serde::{Deserialize, Serialize};

/// The shape of the decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the peak down to 0 at the last step.
    #[default]
    Cosine,
    /// A straight line from the peak down to 0 at the last step.
    Linear,
    /// The peak until the end.
    Constant,
}

/// A schedule over a known number of updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: Schedule,
    /// The rate at the end of warmup.
    pub peak: f32,
    pub warmup_steps: u64,
    /// Updates in the whole run (decay reaches 0 here).
    pub total_steps: u64,
}

impl LrSchedule {
    /// The rate of the update made after `step` updates (0-based).
    pub fn lr(&self, step: u64) -> f32 {
        let peak = f64::from(self.peak);
        if step < self.warmup_steps {
            return (peak * step as f64 / self.warmup_steps as f64) as f32;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = (step - self.warmup_steps) as f64 / decay_steps as f64;
        let factor = match self.kind {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        (peak * factor) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: Schedule) -> LrSchedule {
        LrSchedule {
            kind,
            peak: 2e-5,
            warmup_steps: 500,
            total_steps: 10_500,
        }
    }

    fn close(got: f32, want: f64) -> bool {
        (f64::from(got) - want).abs() <= 1e-12 + 1e-6 * want.abs()
    }

    #[test]
    fn warmup_is_linear_from_zero_to_the_peak_for_every_kind() {
        for kind in [Schedule::Cosine, Schedule::Linear, Schedule::Constant] {
            let s = schedule(kind);
            assert_eq!(s.lr(0), 0.0, "{kind:?} starts at 0");
            assert!(close(s.lr(250), 1e-5), "{kind:?} mid-warmup: {}", s.lr(250));
            assert!(close(s.lr(499), 2e-5 * 499.0 / 500.0), "{kind:?}");
            assert!(
                close(s.lr(500), 2e-5),
                "{kind:?} end of warmup: {}",
                s.lr(500)
            );
        }
    }

    #[test]
    fn cosine_is_half_way_in_the_middle_and_near_zero_at_the_end() {
        let s = schedule(Schedule::Cosine);
        assert!(close(s.lr(5_500), 1e-5), "middle: {}", s.lr(5_500));
        // A quarter of the way: 0.5 * (1 + cos(pi / 4)).
        let quarter = 2e-5 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!(close(s.lr(3_000), quarter), "quarter: {}", s.lr(3_000));
        let last = s.lr(10_499);
        assert!(last > 0.0 && last < 1e-12, "last step: {last}");
        assert_eq!(s.lr(10_500), 0.0);
    }

    #[test]
    fn linear_decays_in_a_straight_line_and_constant_stays() {
        let s = schedule(Schedule::Linear);
        assert!(close(s.lr(5_500), 1e-5), "middle: {}", s.lr(5_500));
        assert!(
            close(s.lr(10_499), 2e-5 / 10_000.0),
            "last: {}",
            s.lr(10_499)
        );
        assert_eq!(s.lr(20_000), 0.0, "past the end it stays at 0");
        let c = schedule(Schedule::Constant);
        assert!(close(c.lr(5_500), 2e-5) && close(c.lr(10_499), 2e-5));
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let s = LrSchedule {
            warmup_steps: 0,
            ..schedule(Schedule::Cosine)
        };
        assert!(close(s.lr(0), 2e-5));
    }

    #[test]
    fn parses_lowercase_names() {
        #[derive(Deserialize)]
        struct P {
            schedule: Schedule,
        }
        for (text, want) in [
            ("cosine", Schedule::Cosine),
            ("linear", Schedule::Linear),
            ("constant", Schedule::Constant),
        ] {
            let p: P = toml::from_str(&format!("schedule = \"{text}\"")).unwrap();
            assert_eq!(p.schedule, want);
        }
        assert!(toml::from_str::<P>("schedule = \"Cosine\"").is_err());
    }
}
