//! Wall-clock jumps (pure): whether the wall clock can be trusted for the
//! irreversible time-based actions (consent expiry sweep, outbox retention,
//! forgetting command ids, audit retention, spool orphan removal).
//! ARCHITECTURE I15.
//!
//! The inputs are the persisted [`Mark`] (the last wall time that was
//! trusted, with the boot it was read in and the boot-time clock,
//! `CLOCK_BOOTTIME`, at that moment), a fresh [`Reading`] of the same three
//! clocks, the NTP synchronisation status and signed-time evidence (the
//! `iat` of a verified command or consent-log head). Within one boot the
//! wall time expected now is `mark.wall + (mono - mark.mono)`; a reading
//! further than `threshold` from it is a jump. Across a reboot the boot-time
//! clock restarts and the time the device was off is unknown: a wall time
//! behind the mark by more than the threshold is a jump, a later one is
//! taken as the time spent off.
//!
//! A jump is confirmed (the new time becomes trusted at once) when NTP says
//! the clock is synchronised (if consulted) or a signed `iat` that arrived
//! under the new time agrees with it within the clock skew. Unconfirmed, the
//! clock is suspect: [`Watch::safe_now`] is `None` and every irreversible
//! action is held; the mark keeps the last trusted time. When the wall
//! clock comes back to within the threshold of the expected time, the
//! suspicion ends by itself and nothing was lost.

/// The persisted high-water mark: the last trusted wall time and when it was
/// read (boot and boot-time clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Unix seconds of the last trusted reading.
    pub wall: i64,
    /// The boot it was read in (`/proc/sys/kernel/random/boot_id`).
    pub boot: String,
    /// Seconds of `CLOCK_BOOTTIME` at that reading.
    pub mono: i64,
    /// Highest wall time trusted since the last confirmed jump (a
    /// confirmed jump back lowers it to the confirmed time).
    pub high: i64,
}

/// One reading of the clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Wall time, unix seconds.
    pub wall: i64,
    /// The current boot.
    pub boot: String,
    /// `CLOCK_BOOTTIME`, seconds.
    pub mono: i64,
}

/// What the kernel says about NTP synchronisation (`adjtimex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// The clock is synchronised.
    Synced,
    /// Not synchronised (`STA_UNSYNC` or `TIME_ERROR`).
    Unsynced,
    /// Not consulted (`[clock] ntp = false`) or unreadable.
    Unknown,
}

/// A signed time seen: a verified command's or head's `iat` and the wall
/// time when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// The signed `iat`.
    pub iat: i64,
    /// The wall time at its arrival.
    pub wall: i64,
}

/// The rule's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Largest difference from the expected time that is not a jump, seconds.
    pub threshold_s: i64,
    /// How far a signed `iat` may differ from the wall time and still
    /// confirm it (`[commands] clock_skew`), seconds.
    pub skew_s: i64,
}

/// What an observation changed, for the log and the audit (each said once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing to report.
    None,
    /// A jump of `jump_s` seconds (negative: backwards) was detected and not
    /// confirmed: irreversible actions are held from now on.
    Jumped {
        /// Wall time minus the expected time.
        jump_s: i64,
    },
    /// The wall clock came back to the expected time: held actions resume.
    Returned,
    /// The new time was confirmed (NTP or a signed `iat`): it is trusted
    /// from now on and held actions resume.
    Confirmed {
        /// The jump that was confirmed.
        jump_s: i64,
        /// How: `ntp` or `signed_iat`.
        by: &'static str,
    },
}

/// A suspect clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspect {
    /// Wall time minus the expected time at the last observation.
    pub jump_s: i64,
    /// Wall time when the jump was detected.
    pub since: i64,
}

/// The watch: the mark and whether the clock is suspect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    mark: Option<Mark>,
    suspect: Option<Suspect>,
}

impl Watch {
    /// A watch starting from the persisted mark (`None` on a new store).
    pub fn new(mark: Option<Mark>) -> Watch {
        Watch {
            mark,
            suspect: None,
        }
    }

    /// The mark to persist.
    pub fn mark(&self) -> Option<&Mark> {
        self.mark.as_ref()
    }

    /// The jump being held, if the clock is suspect.
    pub fn suspect(&self) -> Option<Suspect> {
        self.suspect
    }

    /// The time irreversible actions may use: the wall time of the last
    /// observation while it is trusted, `None` while it is suspect (hold).
    pub fn safe_now(&self) -> Option<i64> {
        match (&self.suspect, &self.mark) {
            (None, Some(m)) => Some(m.wall),
            _ => None,
        }
    }

    /// The wall time expected at `r` from the mark, if it can be known
    /// (same boot).
    fn expected(&self, r: &Reading) -> Option<i64> {
        let m = self.mark.as_ref()?;
        (m.boot == r.boot).then(|| m.wall.saturating_add(r.mono.saturating_sub(m.mono)))
    }

    /// Observes a reading and decides.
    pub fn observe(
        &mut self,
        r: &Reading,
        sync: Sync,
        evidence: Option<Evidence>,
        p: &Policy,
    ) -> Change {
        let Some(mark) = &self.mark else {
            self.trust(r);
            return Change::None;
        };
        let offset = match self.expected(r) {
            Some(expected) => r.wall.saturating_sub(expected),
            // Across a reboot only a step back below the mark is visible.
            None if r.wall < mark.wall => r.wall - mark.wall,
            None => 0,
        };
        if offset.saturating_abs() <= p.threshold_s {
            let was = self.suspect.take();
            self.trust(r);
            return match was {
                Some(_) => Change::Returned,
                None => Change::None,
            };
        }
        let by = if sync == Sync::Synced {
            Some("ntp")
        } else if evidence.is_some_and(|e| agrees(e, r, p)) {
            Some("signed_iat")
        } else {
            None
        };
        if let Some(by) = by {
            self.suspect = None;
            // A confirmed time replaces the high-water mark too: a time
            // trusted before and now shown wrong must not hold on.
            self.mark = None;
            self.trust(r);
            return Change::Confirmed { jump_s: offset, by };
        }
        match &mut self.suspect {
            Some(s) => {
                s.jump_s = offset;
                Change::None
            }
            None => {
                self.suspect = Some(Suspect {
                    jump_s: offset,
                    since: r.wall,
                });
                Change::Jumped { jump_s: offset }
            }
        }
    }

    fn trust(&mut self, r: &Reading) {
        let high = self.mark.as_ref().map_or(r.wall, |m| m.high.max(r.wall));
        self.mark = Some(Mark {
            wall: r.wall,
            boot: r.boot.clone(),
            mono: r.mono,
            high,
        });
    }
}

/// Whether signed-time evidence confirms the reading: the `iat` agrees with
/// the wall time at its arrival within the skew, and it arrived under the
/// current time (not before the jump: at most a threshold before now).
fn agrees(e: Evidence, r: &Reading, p: &Policy) -> bool {
    let since_arrival = r.wall.saturating_sub(e.wall);
    e.wall.saturating_sub(e.iat).saturating_abs() <= p.skew_s
        && (0..=p.threshold_s).contains(&since_arrival)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_858_382;
    const P: Policy = Policy {
        threshold_s: 600,
        skew_s: 300,
    };

    fn at(wall: i64, mono: i64) -> Reading {
        Reading {
            wall,
            boot: "boot-a".into(),
            mono,
        }
    }

    fn after_reboot(wall: i64, mono: i64) -> Reading {
        Reading {
            wall,
            boot: "boot-b".into(),
            mono,
        }
    }

    /// A watch that trusted `T0` at boot time 1000.
    fn started() -> Watch {
        let mut w = Watch::new(None);
        assert_eq!(
            w.observe(&at(T0, 1000), Sync::Unknown, None, &P),
            Change::None
        );
        w
    }

    #[test]
    fn a_new_store_trusts_the_first_reading() {
        let w = started();
        assert_eq!(w.safe_now(), Some(T0));
        assert_eq!(w.mark().unwrap().high, T0);
        assert_eq!(w.suspect(), None);
    }

    #[test]
    fn time_passing_and_small_drift_are_trusted() {
        let mut w = started();
        for (wall, mono) in [
            (T0 + 5, 1005),
            (T0 + 3605, 4600),             // 5 s of drift over an hour
            (T0 + 3605 + 600, 4600),       // exactly the threshold ahead
            (T0 + 3605 + 600 - 600, 4600), // and back
        ] {
            assert_eq!(
                w.observe(&at(wall, mono), Sync::Unknown, None, &P),
                Change::None
            );
            assert_eq!(w.safe_now(), Some(wall));
        }
    }

    #[test]
    fn jumps_either_way_are_held_until_the_clock_returns() {
        for jump in [31 * 86_400, 8 * 86_400, 2 * 86_400, 601, -601, -7200] {
            let mut w = started();
            let c = w.observe(&at(T0 + 10 + jump, 1010), Sync::Unsynced, None, &P);
            assert_eq!(c, Change::Jumped { jump_s: jump }, "{jump}");
            assert_eq!(w.safe_now(), None, "{jump}");
            assert_eq!(w.suspect().unwrap().since, T0 + 10 + jump);
            // Still suspect later, said once.
            let c = w.observe(&at(T0 + 20 + jump, 1020), Sync::Unknown, None, &P);
            assert_eq!(c, Change::None, "{jump}");
            assert_eq!(w.safe_now(), None);
            // The mark keeps the last trusted time, not the jumped one.
            assert_eq!(w.mark().unwrap().wall, T0);
            assert_eq!(w.mark().unwrap().high, T0);
            // The clock comes back: trusted again.
            let c = w.observe(&at(T0 + 30, 1030), Sync::Unknown, None, &P);
            assert_eq!(c, Change::Returned, "{jump}");
            assert_eq!(w.safe_now(), Some(T0 + 30));
        }
    }

    #[test]
    fn a_jump_is_measured_against_the_time_that_passed() {
        let mut w = started();
        // An hour of boot time later, the wall clock is an hour and 2 days on.
        let c = w.observe(&at(T0 + 3600 + 172_800, 4600), Sync::Unknown, None, &P);
        assert_eq!(c, Change::Jumped { jump_s: 172_800 });
        // The jump size follows the clock while suspect.
        w.observe(&at(T0 + 3700 + 86_400, 4700), Sync::Unknown, None, &P);
        assert_eq!(w.suspect().unwrap().jump_s, 86_400);
    }

    #[test]
    fn ntp_confirms_a_jump() {
        let mut w = started();
        let c = w.observe(&at(T0 + 86_400, 1010), Sync::Synced, None, &P);
        assert_eq!(
            c,
            Change::Confirmed {
                jump_s: 86_400 - 10,
                by: "ntp"
            }
        );
        assert_eq!(w.safe_now(), Some(T0 + 86_400));
        assert_eq!(w.mark().unwrap().high, T0 + 86_400);
        // Suspect first, then NTP synchronises.
        let mut w = started();
        w.observe(&at(T0 + 86_400, 1010), Sync::Unsynced, None, &P);
        assert_eq!(w.safe_now(), None);
        let c = w.observe(&at(T0 + 86_405, 1015), Sync::Synced, None, &P);
        assert!(matches!(c, Change::Confirmed { by: "ntp", .. }), "{c:?}");
        assert_eq!(w.safe_now(), Some(T0 + 86_405));
        // Trusted from there on: the next reading is measured from the new time.
        assert_eq!(
            w.observe(&at(T0 + 86_410, 1020), Sync::Unsynced, None, &P),
            Change::None
        );
    }

    #[test]
    fn a_signed_iat_that_agrees_confirms_a_jump() {
        let jumped = T0 + 2 * 86_400;
        let good = Evidence {
            iat: jumped - 100,
            wall: jumped,
        };
        for (evidence, confirmed) in [
            (Some(good), true),
            // Within the skew either way.
            (
                Some(Evidence {
                    iat: jumped + 300,
                    wall: jumped,
                }),
                true,
            ),
            (
                Some(Evidence {
                    iat: jumped - 300,
                    wall: jumped,
                }),
                true,
            ),
            // Beyond the skew: the signer's clock says otherwise.
            (
                Some(Evidence {
                    iat: jumped - 301,
                    wall: jumped,
                }),
                false,
            ),
            // Signed at the old time: it says the jump is wrong.
            (
                Some(Evidence {
                    iat: T0,
                    wall: jumped,
                }),
                false,
            ),
            // Arrived before the jump (under the old time).
            (Some(Evidence { iat: T0, wall: T0 }), false),
            (None, false),
        ] {
            let mut w = started();
            let c = w.observe(&at(jumped + 5, 1010), Sync::Unsynced, evidence, &P);
            assert_eq!(
                matches!(
                    c,
                    Change::Confirmed {
                        by: "signed_iat",
                        ..
                    }
                ),
                confirmed,
                "{evidence:?}: {c:?}"
            );
            assert_eq!(w.safe_now().is_some(), confirmed, "{evidence:?}");
        }
    }

    #[test]
    fn evidence_received_while_suspect_confirms_later() {
        let mut w = started();
        let jumped = T0 + 31 * 86_400;
        w.observe(&at(jumped, 1010), Sync::Unknown, None, &P);
        assert_eq!(w.safe_now(), None);
        let e = Evidence {
            iat: jumped + 20,
            wall: jumped + 30,
        };
        let c = w.observe(&at(jumped + 35, 1045), Sync::Unknown, Some(e), &P);
        assert!(
            matches!(
                c,
                Change::Confirmed {
                    by: "signed_iat",
                    ..
                }
            ),
            "{c:?}"
        );
        assert_eq!(w.safe_now(), Some(jumped + 35));
    }

    #[test]
    fn a_reboot_takes_time_off_but_not_a_step_back() {
        // A day off: forward across a reboot is the time spent off.
        let mut w = started();
        let c = w.observe(&after_reboot(T0 + 86_400, 12), Sync::Unknown, None, &P);
        assert_eq!(c, Change::None);
        assert_eq!(w.safe_now(), Some(T0 + 86_400));
        assert_eq!(w.mark().unwrap().boot, "boot-b");
        // Within the new boot the boot-time clock counts again.
        let c = w.observe(
            &after_reboot(T0 + 86_400 + 3 * 86_400, 20),
            Sync::Unknown,
            None,
            &P,
        );
        assert_eq!(
            c,
            Change::Jumped {
                jump_s: 3 * 86_400 - 8
            }
        );

        // A reboot with a clock behind the mark (no RTC, 1970): held.
        let mut w = started();
        let c = w.observe(&after_reboot(0, 5), Sync::Unsynced, None, &P);
        assert_eq!(c, Change::Jumped { jump_s: -T0 });
        assert_eq!(w.safe_now(), None);
        // Until NTP sets it.
        let c = w.observe(&after_reboot(T0 + 60, 40), Sync::Synced, None, &P);
        assert_eq!(c, Change::Returned);
        assert_eq!(w.safe_now(), Some(T0 + 60));
        // Behind by less than the threshold after a reboot: trusted.
        let mut w = started();
        assert_eq!(
            w.observe(&after_reboot(T0 - 600, 5), Sync::Unknown, None, &P),
            Change::None
        );
    }

    #[test]
    fn a_jump_while_suspect_stays_one_episode() {
        let mut w = started();
        assert!(matches!(
            w.observe(&at(T0 + 86_400, 1010), Sync::Unknown, None, &P),
            Change::Jumped { .. }
        ));
        let since = w.suspect().unwrap().since;
        // Another jump on top, then back behind: still the same episode.
        for wall in [T0 + 10 * 86_400, T0 - 86_400] {
            assert_eq!(
                w.observe(&at(wall, 1020), Sync::Unknown, None, &P),
                Change::None
            );
            assert_eq!(w.suspect().unwrap().since, since);
            assert_eq!(w.safe_now(), None);
        }
        assert_eq!(
            w.observe(&at(T0 + 25, 1025), Sync::Unknown, None, &P),
            Change::Returned
        );
    }

    #[test]
    fn a_confirmed_step_back_lowers_the_high_water_mark() {
        let mut w = started();
        w.observe(&at(T0 + 100, 1100), Sync::Unknown, None, &P);
        let c = w.observe(&at(T0 - 86_400, 1110), Sync::Synced, None, &P);
        assert!(matches!(c, Change::Confirmed { by: "ntp", .. }), "{c:?}");
        let m = w.mark().unwrap();
        assert_eq!((m.wall, m.high), (T0 - 86_400, T0 - 86_400));
    }

    #[test]
    fn the_high_water_mark_only_rises_with_trusted_time() {
        let mut w = started();
        w.observe(&at(T0 + 100, 1100), Sync::Unknown, None, &P);
        w.observe(&at(T0 + 100 - 500, 1100), Sync::Unknown, None, &P); // small step back
        let m = w.mark().unwrap();
        assert_eq!((m.wall, m.high), (T0 - 400, T0 + 100));
        w.observe(&at(T0 + 50 * 86_400, 1200), Sync::Unknown, None, &P);
        assert_eq!(w.mark().unwrap().high, T0 + 100);
    }
}
