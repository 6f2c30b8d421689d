//! AFTER_DEATH: money moved on a budget after the holder's death was
//! recorded (`HolderDied`). The rules already refuse spending for a date
//! after the death; what they let through — a disbursement, or a payment
//! for care given before the death but recorded after it — a person must
//! still check (NDIS refuses claims after the date of death; NFI deceased
//! matches find payments that continued: shared/research/
//! controls-and-reporting.md). A deceased-person data match on a budget
//! whose holder's death is not recorded is flagged too: money may still be
//! moving.

use super::{Context, Flag, FlagCode, Rule, Severity};
use crate::event::{EventKind, MatchKind};
use crate::projections::snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use crate::projections::Committed;
use std::collections::BTreeMap;

/// Where each budget's death was recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AfterDeath {
    death_recorded_at: BTreeMap<String, u64>,
}

impl Rule for AfterDeath {
    fn apply(&mut self, c: &Committed<'_>, cx: &Context<'_>, out: &mut Vec<Flag>) {
        let (Some(b), true) = (cx.budget, c.applied()) else {
            return;
        };
        let sequence = c.head.sequence;
        let (what, amount) = match &c.event.kind {
            EventKind::HolderDied { .. } => {
                self.death_recorded_at.insert(b.id.clone(), sequence);
                return;
            }
            EventKind::ExternalMatchRecorded {
                kind: MatchKind::Deceased,
                source,
                reference,
            } if b.died_on.is_none() => {
                let mut f = Flag::new(
                    FlagCode::AfterDeath,
                    Severity::High,
                    b,
                    &sequence.to_string(),
                );
                f.sequences = vec![sequence];
                f.explanation = format!(
                    "{source} matched the holder to a record of deaths (reference {reference}) at #{sequence}, but no death is recorded on this budget: if confirmed, record HolderDied so that no more money moves, and reclaim what moved after the death"
                );
                out.push(f);
                return;
            }
            EventKind::Disbursement { amount } => ("a disbursement", *amount),
            EventKind::Payment { amount, .. } => ("a payment", *amount),
            EventKind::Purchase { amount, .. } => ("a purchase", *amount),
            EventKind::CardTransaction { amount, .. } => ("a card payment", *amount),
            _ => return,
        };
        let (Some(died), Some(&death)) = (b.died_on, self.death_recorded_at.get(&b.id)) else {
            return;
        };
        let mut f = Flag::new(
            FlagCode::AfterDeath,
            Severity::High,
            b,
            &sequence.to_string(),
        );
        f.sequences = vec![death, sequence];
        f.explanation = format!(
            "{what} of {amount} was recorded at #{sequence}, after the holder's death on {died} was recorded at #{death}; check it was for care given before the death, else reclaim it"
        );
        out.push(f);
    }
}

/// Snapshot: the map of budget id → the HolderDied entry's sequence.
impl AfterDeath {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        let AfterDeath { death_recorded_at } = self;
        w.seq(death_recorded_at, |w, (id, sequence)| {
            w.str(id);
            w.u64(*sequence);
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<AfterDeath, SnapshotError> {
        Ok(AfterDeath {
            death_recorded_at: r.map(|r| Ok((r.string()?, r.u64()?)))?,
        })
    }
}
