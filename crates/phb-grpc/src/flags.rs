//! Flags on the wire: `Flag` messages (in `AppendResult.flags` and
//! `ListFlags`) and the ListFlags filters, scope and paging.

use crate::status;
use phb_domain::event::Date;
use phb_domain::projections::flags::{Flag, Flags};
use phb_domain::{Reader, Role};
use phb_proto::v1 as pb;
use tonic::Status;

/// Default and largest ListFlags page.
pub const MAX_FLAGS_PAGE: usize = 500;

pub use phb_domain::wire::flag_pb;
use phb_domain::wire::{flag_code_pb as code_pb, flag_status_pb as status_of};

/// Who may list which flags: root and auditors every flag; a commissioner
/// the flags of its own budgets (and may filter only by itself); anyone
/// else none. Returns the commissioner the listing is confined to, if any.
pub fn scope(reader: Reader<'_>, filter: &str) -> Result<Option<String>, Status> {
    match reader {
        Reader::Root => Ok(None),
        Reader::Organisation(o) if o.has(Role::Auditor) => Ok(None),
        Reader::Organisation(o) if o.has(Role::Commissioner) => {
            if filter.is_empty() || filter == o.id {
                Ok(Some(o.id.clone()))
            } else {
                Err(Status::permission_denied(format!(
                    "{:?} may not list the flags of commissioner {filter:?}; a commissioner lists its own",
                    o.id
                )))
            }
        }
        Reader::Organisation(o) => Err(Status::permission_denied(format!(
            "{:?} may not list flags: commissioners list the flags of their budgets, auditors all",
            o.id
        ))),
    }
}

/// The date the time-based rules read: `as_of`, or `now_micros`.
pub fn as_of_date(as_of: Option<&prost_types::Timestamp>, now_micros: i64) -> Result<Date, Status> {
    match as_of {
        None => Ok(Date::from_unix_micros(now_micros)),
        Some(t) => {
            // 2000-01-01 .. 2199-12-31, as event times.
            if !(946_684_800..=7_258_118_399).contains(&t.seconds)
                || !(0..1_000_000_000).contains(&t.nanos)
            {
                return Err(status::invalid(
                    "as_of",
                    "as_of must be a valid time from 2000-01-01 to 2199-12-31",
                ));
            }
            Ok(Date::from_unix_micros(t.seconds * 1_000_000))
        }
    }
}

/// A ListFlags filter, checked.
pub struct Filter {
    /// Only this budget ("" any).
    pub budget_id: String,
    /// Only this commissioner's budgets (None any).
    pub commissioner_id: Option<String>,
    /// Only this code.
    pub code: Option<pb::FlagCode>,
    /// Only this status.
    pub status: Option<pb::FlagStatus>,
    /// Raised after this sequence.
    pub since_sequence: u64,
}

impl Filter {
    /// The filter of `req`, confined to `scope`.
    pub fn of(req: &pb::ListFlagsRequest, scope: Option<String>) -> Result<Filter, Status> {
        if !req.budget_id.is_empty() {
            phb_domain::event::check_id("budget_id", &req.budget_id, phb_domain::event::MAX_ID_LEN)
                .map_err(|r| status::from_reject(&r))?;
        }
        let code = match pb::FlagCode::try_from(req.code) {
            Ok(pb::FlagCode::Unspecified) => None,
            Ok(c) => Some(c),
            Err(_) => return Err(status::invalid("code", "code is not a FlagCode value")),
        };
        let status = match pb::FlagStatus::try_from(req.status) {
            Ok(pb::FlagStatus::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => {
                return Err(status::invalid(
                    "status",
                    "status is not a FlagStatus value",
                ))
            }
        };
        let commissioner_id = scope
            .or_else(|| (!req.commissioner_id.is_empty()).then(|| req.commissioner_id.clone()));
        Ok(Filter {
            budget_id: req.budget_id.clone(),
            commissioner_id,
            code,
            status,
            since_sequence: req.since_sequence,
        })
    }

    /// True if `f` passes.
    pub fn keeps(&self, flags: &Flags, f: &Flag) -> bool {
        (self.budget_id.is_empty() || f.budget_id == self.budget_id)
            && self
                .commissioner_id
                .as_ref()
                .is_none_or(|c| *c == f.commissioner_id)
            && self.code.is_none_or(|c| c == code_pb(f.code))
            && self.status.is_none_or(|s| s == status_of(flags, &f.id))
            && f.raised_at > self.since_sequence
    }
}

const FLAG_TOKEN_PREFIX: &str = "after:";

/// The page token after flag `id`.
pub fn encode_token(id: &str) -> String {
    format!("{FLAG_TOKEN_PREFIX}{id}")
}

/// The flag id a page token continues after ("" for the first page).
pub fn decode_token(token: &str) -> Result<&str, Status> {
    if token.is_empty() {
        return Ok("");
    }
    token
        .strip_prefix(FLAG_TOKEN_PREFIX)
        .filter(|id| phb_domain::event::split_flag_id(id).is_some())
        .ok_or_else(|| {
            status::invalid(
                "page_token",
                "page_token is not one this server issued; pass next_page_token from the previous page, or empty for the first",
            )
        })
}
