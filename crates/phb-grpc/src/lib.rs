//! The gRPC shell of phb-ledger: `phb.ledger.v1.LedgerService`, read-call
//! authentication, health and reflection. Converts wire types to domain types
//! and back; every `Reject` becomes a `tonic::Status` in `status::from_reject`.
#![deny(missing_docs)]

mod flags;
mod log_limit;
mod proofs;
mod read_auth;
mod reports;
mod server;
pub mod status;

use pb::ledger_service_server::{LedgerService, LedgerServiceServer};
use phb_domain::chain::SignedEvent;
use phb_domain::projections::{Holding, HoldingTotals, StatementRow};
use phb_domain::{Budget, HoldingsScope, Ledger, LogEntry, Role};
use phb_engine::{Engine, Outcome, MAX_EVENTS_PER_REQUEST};
use phb_proto::v1 as pb;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

pub use read_auth::MAX_CLOCK_SKEW_SECS;
pub use server::limits::{self, LimitsError, ServerLimits};
pub use server::{CertOrganisation, ServeError, TlsSettings};

/// Largest request accepted on the wire (8 MiB). A full 1000-event batch of
/// typical events is well under 1 MiB; single events are capped at 64 KiB.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Default and largest ListBalances page.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest ListBalances page.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Entries read from disk per ReadLog step.
const READ_LOG_CHUNK: usize = 256;
/// Entries buffered per ReadLog stream before back-pressure.
const READ_LOG_BUFFER: usize = 512;

/// The service.
#[derive(Clone)]
pub struct LedgerApi {
    engine: Engine,
    /// Read-call authentication (keys, nonces seen).
    auth: std::sync::Arc<read_auth::ReadAuth>,
    /// Set to true when the server starts shutting down: ends ReadLog
    /// streams, which would otherwise hold graceful shutdown open forever.
    stopping: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Bounds the server log lines refusals cause.
    refusal_log: std::sync::Arc<log_limit::LogLimiter>,
}

impl LedgerApi {
    /// Wraps an engine.
    pub fn new(engine: Engine, require_read_nonce: bool) -> Self {
        LedgerApi {
            auth: std::sync::Arc::new(read_auth::ReadAuth::new(engine.clone(), require_read_nonce)),
            engine,
            stopping: std::sync::Arc::new(tokio::sync::watch::Sender::new(false)),
            refusal_log: Default::default(),
        }
    }
}

use phb_domain::wire::{balance_pb as money_pb, management_pb};

/// A timestamp from microseconds since the epoch.
fn timestamp_pb(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn holding_pb(h: &Holding) -> pb::Holding {
    pb::Holding {
        budget_id: h.budget_id.clone(),
        holder_ref: h.holder_ref.clone(),
        commissioner_id: h.commissioner_id.clone(),
        management: management_pb(h.management),
        paid_in: h.paid_in.to_string(),
        spent: h.spent.to_string(),
        held: h.held().to_string(),
        last_movement_sequence: h.last_movement_sequence,
        last_movement_at: (h.last_movement_sequence != 0)
            .then(|| timestamp_pb(h.last_movement_recorded_at_micros)),
        stopped: h.stopped,
    }
}

fn statement_row_pb(r: &StatementRow) -> pb::StatementRow {
    pb::StatementRow {
        sequence: r.sequence,
        recorded_at: Some(timestamp_pb(r.recorded_at_micros)),
        occurred_at: Some(timestamp_pb(r.occurred_at_micros)),
        kind: r.kind.to_string(),
        signer_id: r.signer_id.to_string(),
        amount: r.amount.map(|a| a.to_string()).unwrap_or_default(),
        allocated: r.allocated.to_string(),
        paid_in: r.paid_in.to_string(),
        spent: r.spent.to_string(),
        held: r.held.to_string(),
        refused: r.refusal_code.is_some(),
        refusal_code: r.refusal_code.unwrap_or(0),
        // Filled in from the log by the caller: rows keep no text.
        refusal_message: String::new(),
    }
}

fn care_plan_pb(b: &Budget, plan: &phb_domain::ledger::CarePlan) -> pb::GetCarePlanResponse {
    let spec = &plan.spec;
    pb::GetCarePlanResponse {
        budget_id: b.id.clone(),
        plan_id: spec.plan_id.clone(),
        approved_at_sequence: plan.approved_at,
        approved_by: plan.approved_by.clone(),
        valid_from: spec.valid_from.to_string(),
        valid_to: spec.valid_to.to_string(),
        review_due: spec.review_due.to_string(),
        total: spec.total().unwrap_or_default().to_string(),
        contingency_amount: spec.contingency.to_string(),
        contingency_used: plan.contingency_used.to_string(),
        lines: spec
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| pb::PlanLineUsage {
                line_id: l.line_id.clone(),
                category: l.category.clone(),
                annual_amount: l.annual.to_string(),
                spent: plan.line_spent[i].to_string(),
                remaining: plan.line_left(i).to_string(),
                description: l.description.clone(),
            })
            .collect(),
    }
}

/// The wire form of a log entry.
pub fn entry_pb(e: LogEntry) -> pb::LogEntry {
    pb::LogEntry {
        sequence: e.sequence,
        recorded_at: Some(timestamp_pb(e.recorded_at_micros)),
        prev_hash: e.prev_hash.to_vec(),
        hash: e.hash.to_vec(),
        signed_event: Some(pb::SignedEvent {
            event: e.signed.event,
            signer_id: e.signed.signer_id,
            signature: e.signed.signature,
        }),
        refusal: e.refusal.map(|r| pb::Refusal {
            code: r.code,
            in_atomic_batch: r.in_atomic_batch,
            message: r.message,
            first_in_batch: r.first_in_batch,
        }),
    }
}

fn error_pb(r: phb_domain::Reject) -> Option<pb::ErrorStatus> {
    Some(pb::ErrorStatus {
        code: r.code.grpc_code(),
        message: r.message,
        field: r.field.unwrap_or_default(),
    })
}

/// The wire result of `o`; a written (or duplicate) event carries the flags
/// its entry raised, read from `flags` (folded before the answer).
fn result_pb(o: Outcome, event_id: String, flags: &phb_domain::Flags) -> pb::AppendResult {
    let ok = Some(pb::ErrorStatus::default());
    let raised = |sequence: u64| {
        flags
            .raised_by(sequence)
            .map(|f| flags::flag_pb(flags, f))
            .collect()
    };
    match o {
        Outcome::Written {
            sequence,
            entry_hash,
            recorded_at_micros,
            prev_hash,
        } => pb::AppendResult {
            sequence,
            duplicate: false,
            event_id,
            error: ok,
            entry_hash: entry_hash.to_vec(),
            refusal_sequence: 0,
            flags: raised(sequence),
            tree_size: sequence,
            recorded_at: Some(timestamp_pb(recorded_at_micros)),
            prev_hash: prev_hash.to_vec(),
        },
        Outcome::Duplicate {
            sequence,
            entry_hash,
        } => pb::AppendResult {
            sequence,
            duplicate: true,
            event_id,
            error: ok,
            entry_hash: entry_hash.to_vec(),
            refusal_sequence: 0,
            flags: raised(sequence),
            tree_size: sequence,
            // Filled from the log by the caller (a duplicate is rare).
            recorded_at: None,
            prev_hash: Vec::new(),
        },
        Outcome::Refused {
            reject,
            sequence,
            entry_hash,
            duplicate,
        } => pb::AppendResult {
            sequence: 0,
            duplicate,
            event_id,
            error: error_pb(reject),
            entry_hash: entry_hash.to_vec(),
            refusal_sequence: sequence,
            flags: raised(sequence),
            tree_size: sequence,
            recorded_at: None,
            prev_hash: Vec::new(),
        },
        Outcome::Rejected(r) => pb::AppendResult {
            sequence: 0,
            duplicate: false,
            event_id,
            error: error_pb(r),
            entry_hash: Vec::new(),
            refusal_sequence: 0,
            flags: Vec::new(),
            tree_size: 0,
            recorded_at: None,
            prev_hash: Vec::new(),
        },
    }
}

const PAGE_TOKEN_PREFIX: &str = "after:";

fn encode_page_token(last_id: &str) -> String {
    format!("{PAGE_TOKEN_PREFIX}{last_id}")
}

fn decode_page_token(token: &str) -> Result<&str, Status> {
    if token.is_empty() {
        return Ok("");
    }
    token
        .strip_prefix(PAGE_TOKEN_PREFIX)
        .filter(|id| phb_domain::event::check_id("page_token", id, phb_domain::event::MAX_ID_LEN).is_ok())
        .ok_or_else(|| {
            status::invalid(
                "page_token",
                "page_token is not one this server issued; pass next_page_token from the previous page, or empty for the first",
            )
        })
}

const STATEMENT_TOKEN_PREFIX: &str = "after:";

fn encode_statement_token(last_sequence: u64) -> String {
    format!("{STATEMENT_TOKEN_PREFIX}{last_sequence}")
}

fn decode_statement_token(token: &str) -> Result<u64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix(STATEMENT_TOKEN_PREFIX)
        .filter(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            status::invalid(
                "page_token",
                "page_token is not one this server issued; pass next_page_token from the previous page, or empty for the first",
            )
        })
}

fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

impl LedgerApi {
    /// Authenticates a read call for `method`, checks `budget_id`, finds the
    /// budget and the caller's right to read it, and answers with `f`.
    fn with_readable_budget<T, R>(
        &self,
        request: &Request<T>,
        method: &str,
        budget_id: &str,
        f: impl FnOnce(&Budget) -> Result<R, Status>,
    ) -> Result<R, Status> {
        let reader_id = read_auth::authenticate(&self.auth, request, method)?;
        phb_domain::event::check_id("budget_id", budget_id, phb_domain::event::MAX_ID_LEN)
            .map_err(|r| status::from_reject(&r))?;
        let view = self.engine.view();
        let reader = view
            .reader(&reader_id)
            .ok_or_else(|| Status::unauthenticated("caller is no longer registered"))?;
        let budget = view
            .budget(budget_id)
            .ok_or_else(|| Status::not_found(format!("budget {budget_id:?} does not exist")))?;
        if !Ledger::may_read(reader, budget) {
            return Err(Status::permission_denied(format!(
                "{reader_id:?} may not read budget {budget_id:?}: commissioners read their own budgets, providers and facilitators the budgets that name them, auditors all"
            )));
        }
        f(budget)
    }

    /// Authenticates a read call for `method` by any registered organisation
    /// (or root).
    fn registered_reader<T>(&self, request: &Request<T>, method: &str) -> Result<(), Status> {
        let reader_id = read_auth::authenticate(&self.auth, request, method)?;
        if self.engine.view().reader(&reader_id).is_none() {
            return Err(Status::unauthenticated("caller is no longer registered"));
        }
        Ok(())
    }

    /// One bounded, escaped line per refusal (see `log_limit`).
    fn log_refusal(&self, event_id: &str, r: &phb_domain::Reject) {
        use phb_domain::error::quote;
        if let Some(suppressed) = self.refusal_log.admit() {
            tracing::info!(
                event_id = %quote(event_id),
                code = ?r.code,
                field = %quote(r.field.as_deref().unwrap_or("")),
                reason = %quote_long(&r.message),
                suppressed_since_last = suppressed,
                "event refused"
            );
        }
    }
}

/// A refusal message for the log: escaped like `quote`, cut at 300
/// characters. Messages are ours but may quote client input.
fn quote_long(s: &str) -> String {
    const MAX: usize = 300;
    let escaped: String = s.chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(MAX) {
        None => escaped,
        Some((cut, _)) => format!("{}... ({} bytes)", &escaped[..cut], s.len()),
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::ReadLogResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let request_org = request.extensions().get::<CertOrganisation>().cloned();
        let role = self.engine.role().borrow().clone();
        if let Some(refusal) = role.refuses_writes() {
            let writer = match &role {
                phb_engine::Role::Reader { writer } => writer.as_deref(),
                _ => None,
            };
            return Err(status::not_the_writer(&refusal, writer));
        }
        let req = request.into_inner();
        if req.events.is_empty() {
            return Err(status::invalid(
                "events",
                "events is empty; send at least one SignedEvent",
            ));
        }
        if req.events.len() > MAX_EVENTS_PER_REQUEST {
            return Err(status::invalid(
                "events",
                &format!(
                    "{} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}: split the batch",
                    req.events.len()
                ),
            ));
        }
        if let Some(bound) = request_org.as_ref() {
            if let Some(e) = req
                .events
                .iter()
                .find(|e| bound.0.as_deref() != Some(e.signer_id.as_str()))
            {
                return Err(Status::permission_denied(format!(
                    "this connection's client certificate is for {}, but an event is signed by {}: send each organisation's events over its own certificate",
                    bound.0.as_deref().map(phb_domain::error::quote).unwrap_or_else(|| "no organisation".into()),
                    phb_domain::error::quote(&e.signer_id)
                )));
            }
        }
        let ids: Vec<String> = req
            .events
            .iter()
            .map(|e| phb_domain::event::decode_event_id(&e.event).unwrap_or_default())
            .collect();
        let events = req
            .events
            .into_iter()
            .map(|e| SignedEvent {
                event: e.event,
                signer_id: e.signer_id,
                signature: e.signature,
            })
            .collect();
        let outcomes = self.engine.submit(events, req.atomic).await;
        let view = self.engine.view();
        let results: Vec<pb::AppendResult> = outcomes
            .into_iter()
            .zip(ids)
            .map(|(o, id)| {
                if let Some(r) = o.reject() {
                    self.log_refusal(&id, r);
                }
                result_pb(o, id, view.flags())
            })
            .collect();
        drop(view);
        // A duplicate's receipt carries its entry's time and link too: read
        // back from the log (the original write answered them directly).
        let mut results = results;
        for r in results.iter_mut().filter(|r| {
            r.duplicate && r.sequence > 0 && r.error.as_ref().is_none_or(|e| e.code == 0)
        }) {
            if let Ok(entries) = self.engine.read_log(r.sequence, 1) {
                if let Some(e) = entries
                    .first()
                    .filter(|e| e.hash.as_slice() == r.entry_hash)
                {
                    r.recorded_at = Some(timestamp_pb(e.recorded_at_micros));
                    r.prev_hash = e.prev_hash.to_vec();
                }
            }
        }
        // Tallied per request, so a batch of events takes each series once
        // (a series lookup locks and allocates), not once per event.
        let m = phb_metrics::global();
        let mut codes: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let mut raised: std::collections::BTreeMap<&'static str, u64> = Default::default();
        for r in &results {
            let code = r.error.as_ref().map_or(0, |e| e.code);
            *codes.entry(status::code_name(code)).or_default() += 1;
            if !r.duplicate && code == 0 {
                for f in &r.flags {
                    let name = pb::FlagCode::try_from(f.code)
                        .map_or("FLAG_CODE_UNSPECIFIED", |c| c.as_str_name());
                    *raised
                        .entry(name.trim_start_matches("FLAG_CODE_"))
                        .or_default() += 1;
                }
            }
        }
        for (code, n) in codes {
            m.append_events.with(&[code]).add(n);
        }
        for (code, n) in raised {
            m.flags_raised.with(&[code]).add(n);
        }
        Ok(Response::new(pb::AppendResponse { results }))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let budget_id = request.get_ref().budget_id.clone();
        self.with_readable_budget(&request, phb_client_paths::GET_BALANCE, &budget_id, |b| {
            Ok(Response::new(pb::GetBalanceResponse {
                balance: Some(money_pb(b)),
            }))
        })
    }

    async fn get_care_plan(
        &self,
        request: Request<pb::GetCarePlanRequest>,
    ) -> Result<Response<pb::GetCarePlanResponse>, Status> {
        let budget_id = request.get_ref().budget_id.clone();
        self.with_readable_budget(&request, phb_client_paths::GET_CARE_PLAN, &budget_id, |b| {
            let plan = b.plan.as_ref().ok_or_else(|| {
                Status::not_found(format!(
                    "budget {budget_id:?} has no approved care plan; one is approved with CarePlanApproved"
                ))
            })?;
            Ok(Response::new(care_plan_pb(b, plan)))
        })
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        self.registered_reader(&request, phb_client_paths::GET_CHECKPOINT)?;
        let engine = self.engine.clone();
        let req = request.into_inner();
        // Issuing a checkpoint fsyncs: not on the async workers.
        tokio::task::spawn_blocking(move || proofs::checkpoint(&engine, &req))
            .await
            .map_err(|e| Status::internal(format!("checkpoint task failed: {e}")))?
            .map(Response::new)
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::GetInclusionProofResponse>, Status> {
        self.registered_reader(&request, phb_client_paths::GET_INCLUSION_PROOF)?;
        proofs::inclusion(&self.engine, request.get_ref()).map(Response::new)
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        self.registered_reader(&request, phb_client_paths::GET_CONSISTENCY_PROOF)?;
        proofs::consistency(&self.engine, request.get_ref()).map(Response::new)
    }

    async fn list_flags(
        &self,
        request: Request<pb::ListFlagsRequest>,
    ) -> Result<Response<pb::ListFlagsResponse>, Status> {
        let reader_id =
            read_auth::authenticate(&self.auth, &request, phb_client_paths::LIST_FLAGS)?;
        let req = request.get_ref();
        let page_size = match req.page_size as usize {
            0 => flags::MAX_FLAGS_PAGE,
            n => n.min(flags::MAX_FLAGS_PAGE),
        };
        let after = flags::decode_token(&req.page_token)?;
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let on = flags::as_of_date(req.as_of.as_ref(), now_micros)?;
        let view = self.engine.view();
        let reader = view
            .reader(&reader_id)
            .ok_or_else(|| Status::unauthenticated("caller is no longer registered"))?;
        let scope = flags::scope(reader, &req.commissioner_id)?;
        let filter = flags::Filter::of(req, scope)?;
        let head = view.head().sequence;
        let all = view.flags().list(view.balances(), on, head);
        let mut page = Vec::with_capacity(page_size.min(all.len()));
        let mut more = false;
        for f in all
            .iter()
            .filter(|f| f.id.as_str() > after && filter.keeps(view.flags(), f))
        {
            if page.len() == page_size {
                more = true;
                break;
            }
            page.push(flags::flag_pb(view.flags(), f));
        }
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => flags::encode_token(&last.flag_id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFlagsResponse {
            flags: page,
            next_page_token,
            head_sequence: head,
        }))
    }

    async fn get_spending_summary(
        &self,
        request: Request<pb::GetSpendingSummaryRequest>,
    ) -> Result<Response<pb::GetSpendingSummaryResponse>, Status> {
        let reader_id =
            read_auth::authenticate(&self.auth, &request, phb_client_paths::GET_SPENDING_SUMMARY)?;
        let view = self.engine.view();
        reports::spending_summary(&view, &reader_id, request.get_ref()).map(Response::new)
    }

    async fn get_quarterly_return(
        &self,
        request: Request<pb::GetQuarterlyReturnRequest>,
    ) -> Result<Response<pb::GetQuarterlyReturnResponse>, Status> {
        let reader_id =
            read_auth::authenticate(&self.auth, &request, phb_client_paths::GET_QUARTERLY_RETURN)?;
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let today = phb_domain::event::Date::from_unix_micros(now_micros);
        let view = self.engine.view();
        reports::quarterly_return(&view, &reader_id, request.get_ref(), today).map(Response::new)
    }

    async fn list_balances(
        &self,
        request: Request<pb::ListBalancesRequest>,
    ) -> Result<Response<pb::ListBalancesResponse>, Status> {
        let reader_id =
            read_auth::authenticate(&self.auth, &request, phb_client_paths::LIST_BALANCES)?;
        let req = request.get_ref();
        let page_size = page_size(req.page_size);
        let after = decode_page_token(&req.page_token)?;
        let filter = req.commissioner_id.as_str();
        let view = self.engine.view();
        let reader = view
            .reader(&reader_id)
            .ok_or_else(|| Status::unauthenticated("caller is no longer registered"))?;
        if !Ledger::may_list(reader, filter) {
            return Err(Status::permission_denied(format!(
                "{reader_id:?} may not list the budgets of commissioner {filter:?}; a commissioner lists its own"
            )));
        }
        let mut balances = Vec::with_capacity(page_size);
        let mut more = false;
        for b in view.budgets_after(after) {
            if (!filter.is_empty() && b.commissioner_id != filter) || !Ledger::may_read(reader, b) {
                continue;
            }
            if balances.len() == page_size {
                more = true;
                break;
            }
            balances.push(money_pb(b));
        }
        let next_page_token = match (more, balances.last()) {
            (true, Some(last)) => encode_page_token(&last.budget_id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListBalancesResponse {
            balances,
            next_page_token,
        }))
    }

    async fn get_holdings(
        &self,
        request: Request<pb::GetHoldingsRequest>,
    ) -> Result<Response<pb::GetHoldingsResponse>, Status> {
        let reader_id =
            read_auth::authenticate(&self.auth, &request, phb_client_paths::GET_HOLDINGS)?;
        let org_id = &request.get_ref().organisation_id;
        phb_domain::event::check_id("organisation_id", org_id, phb_domain::event::MAX_ID_LEN)
            .map_err(|r| status::from_reject(&r))?;
        let view = self.engine.view();
        let reader = view
            .reader(&reader_id)
            .ok_or_else(|| Status::unauthenticated("caller is no longer registered"))?;
        let org = view.directory().organisation(org_id).ok_or_else(|| {
            Status::not_found(format!("organisation {org_id:?} is not registered"))
        })?;
        let scope = Ledger::holdings_scope(reader, org_id);
        if scope == HoldingsScope::Denied {
            return Err(Status::permission_denied(format!(
                "{reader_id:?} may not read the holdings of {org_id:?}: the funds holder itself, auditors and root read them, commissioners the rows of their own budgets"
            )));
        }
        if !(org.has(Role::ThirdParty) || org.has(Role::AccountProvider)) {
            return Err(Status::failed_precondition(format!(
                "{org_id:?} is not a funds holder: holdings are kept for organisations with ROLE_THIRD_PARTY or ROLE_ACCOUNT_PROVIDER"
            )));
        }
        let rows: Vec<&Holding> = view
            .holdings()
            .of(org_id)
            .filter(|h| scope == HoldingsScope::All || h.commissioner_id == reader_id)
            .collect();
        let totals = HoldingTotals::of(rows.iter().copied());
        Ok(Response::new(pb::GetHoldingsResponse {
            organisation_id: org_id.clone(),
            holdings: rows.into_iter().map(holding_pb).collect(),
            total_paid_in: totals.paid_in.to_string(),
            total_spent: totals.spent.to_string(),
            total_held: totals.held.to_string(),
            restricted: scope == HoldingsScope::OwnBudgets,
            as_of_sequence: view.head().sequence,
        }))
    }

    async fn get_budget_statement(
        &self,
        request: Request<pb::GetBudgetStatementRequest>,
    ) -> Result<Response<pb::GetBudgetStatementResponse>, Status> {
        let reader_id =
            read_auth::authenticate(&self.auth, &request, phb_client_paths::GET_BUDGET_STATEMENT)?;
        let req = request.into_inner();
        let budget_id = req.budget_id;
        phb_domain::event::check_id("budget_id", &budget_id, phb_domain::event::MAX_ID_LEN)
            .map_err(|r| status::from_reject(&r))?;
        let page_size = page_size(req.page_size);
        let after = decode_statement_token(&req.page_token)?;
        // Rows up to the budget's `forgotten_through` are in the store,
        // the rest in the view; a row leaves the view only once the store
        // has it, so reading the view first and the store second misses
        // nothing.
        let (forgotten, resident) = {
            let view = self.engine.view();
            let reader = view
                .reader(&reader_id)
                .ok_or_else(|| Status::unauthenticated("caller is no longer registered"))?;
            let budget = view
                .budget(&budget_id)
                .ok_or_else(|| Status::not_found(format!("budget {budget_id:?} does not exist")))?;
            if !Ledger::may_read(reader, budget) {
                return Err(Status::permission_denied(format!(
                    "{reader_id:?} may not read budget {budget_id:?}: commissioners read their own budgets, providers the budgets that name them, auditors all"
                )));
            }
            let statements = view.statements();
            let forgotten = statements
                .forgotten_through(&budget_id)
                .ok_or_else(|| Status::internal("the budget has no statement"))?;
            let all = statements
                .rows_after(&budget_id, after.max(forgotten))
                .ok_or_else(|| Status::internal("the budget has no statement"))?;
            (forgotten, all[..all.len().min(page_size + 1)].to_vec())
        };
        let mut page = Vec::with_capacity(page_size + 1);
        if after < forgotten {
            let engine = self.engine.clone();
            let id = budget_id.clone();
            page = tokio::task::spawn_blocking(move || {
                engine.stored_statement_rows(&id, after, forgotten, page_size + 1)
            })
            .await
            .map_err(|_| Status::internal("reading the statement failed"))?
            .map_err(|e| {
                tracing::error!(error = %e, "GetBudgetStatement could not read stored rows");
                Status::internal(format!("reading the statement failed: {e}"))
            })?;
        }
        page.extend(resident);
        let more = page.len() > page_size;
        page.truncate(page_size);
        let mut rows: Vec<_> = page.iter().map(statement_row_pb).collect();
        // Refusal messages stay in the log, not in the projection.
        let refused: Vec<u64> = rows
            .iter()
            .filter(|r| r.refused)
            .map(|r| r.sequence)
            .collect();
        if !refused.is_empty() {
            let engine = self.engine.clone();
            let messages = tokio::task::spawn_blocking(move || {
                refused
                    .into_iter()
                    .map(|seq| {
                        let entry = engine
                            .read_log(seq, 1)
                            .map_err(|e| e.to_string())?
                            .into_iter()
                            .next();
                        Ok((seq, entry.and_then(|e| e.refusal).map(|r| r.message)))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .await
            .map_err(|_| Status::internal("reading refusal messages from the log failed"))?
            .map_err(|e| {
                tracing::error!(error = %e, "GetBudgetStatement could not read the log");
                Status::internal(format!("reading the log failed: {e}"))
            })?;
            let mut messages = messages.into_iter();
            for row in rows.iter_mut().filter(|r| r.refused) {
                match messages.next() {
                    Some((seq, Some(m))) if seq == row.sequence => row.refusal_message = m,
                    _ => {
                        return Err(Status::internal(format!(
                            "the log has no refusal at sequence {}",
                            row.sequence
                        )))
                    }
                }
            }
        }
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => encode_statement_token(last.sequence),
            _ => String::new(),
        };
        Ok(Response::new(pb::GetBudgetStatementResponse {
            budget_id,
            rows,
            next_page_token,
        }))
    }

    type ReadLogStream = LogStream;

    async fn read_log(
        &self,
        request: Request<pb::ReadLogRequest>,
    ) -> Result<Response<Self::ReadLogStream>, Status> {
        let reader_id = read_auth::authenticate(&self.auth, &request, phb_client_paths::READ_LOG)?;
        {
            let view = self.engine.view();
            let reader = view
                .reader(&reader_id)
                .ok_or_else(|| Status::unauthenticated("caller is no longer registered"))?;
            if !Ledger::may_read_log(reader) {
                return Err(Status::permission_denied(format!(
                    "{reader_id:?} may not read the whole log: auditors only (use GetBalance/ListBalances for your budgets)"
                )));
            }
        }
        let req = request.into_inner();
        let engine = self.engine.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(READ_LOG_BUFFER);
        let mut stopping = self.stopping.subscribe();
        let stop_tx = tx.clone();
        let stream = async move {
            let mut next = req.from_sequence.max(1);
            let mut committed = engine.committed();
            loop {
                let e = engine.clone();
                let batch =
                    tokio::task::spawn_blocking(move || e.read_log(next, READ_LOG_CHUNK)).await;
                let batch = match batch {
                    Ok(Ok(b)) => b,
                    Ok(Err(err)) => {
                        tracing::error!(error = %err, "ReadLog could not read the log");
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "reading the log failed: {err}"
                            ))))
                            .await;
                        return;
                    }
                    Err(_) => return,
                };
                if batch.is_empty() {
                    if !req.follow {
                        return;
                    }
                    // Wait for the next commit (or the client going away).
                    tokio::select! {
                        changed = committed.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                for entry in batch {
                    next = entry.sequence + 1;
                    if tx
                        .send(Ok(pb::ReadLogResponse {
                            entry: Some(entry_pb(entry)),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = stream => {}
                _ = stopping.wait_for(|s| *s) => {
                    let _ = stop_tx.try_send(Err(Status::unavailable(
                        "the server is shutting down; reconnect and resume from the next sequence",
                    )));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Method paths (kept here so the server does not depend on the client crate).
mod phb_client_paths {
    pub const GET_BALANCE: &str = "/phb.ledger.v1.LedgerService/GetBalance";
    pub const LIST_BALANCES: &str = "/phb.ledger.v1.LedgerService/ListBalances";
    pub const READ_LOG: &str = "/phb.ledger.v1.LedgerService/ReadLog";
    pub const GET_HOLDINGS: &str = "/phb.ledger.v1.LedgerService/GetHoldings";
    pub const GET_BUDGET_STATEMENT: &str = "/phb.ledger.v1.LedgerService/GetBudgetStatement";
    pub const GET_CARE_PLAN: &str = "/phb.ledger.v1.LedgerService/GetCarePlan";
    pub const LIST_FLAGS: &str = "/phb.ledger.v1.LedgerService/ListFlags";
    pub const GET_CHECKPOINT: &str = "/phb.ledger.v1.LedgerService/GetCheckpoint";
    pub const GET_INCLUSION_PROOF: &str = "/phb.ledger.v1.LedgerService/GetInclusionProof";
    pub const GET_CONSISTENCY_PROOF: &str = "/phb.ledger.v1.LedgerService/GetConsistencyProof";
    pub const GET_SPENDING_SUMMARY: &str = "/phb.ledger.v1.LedgerService/GetSpendingSummary";
    pub const GET_QUARTERLY_RETURN: &str = "/phb.ledger.v1.LedgerService/GetQuarterlyReturn";
}

/// The health service name (grpc.health.v1) that is SERVING only on an
/// instance that takes appends: the writer of a shared log, or an instance
/// alone on its own log while it can write. `phb.ledger.v1.LedgerService`
/// (and "") are SERVING on every instance that serves reads.
pub const WRITER_HEALTH_SERVICE: &str = "phb.ledger.v1.LedgerService/Append";

/// How `serve` authenticates beyond signatures.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// TLS (and mutual TLS) on the listener; `None`: plaintext.
    pub tls: Option<TlsSettings>,
    /// Refuse read calls without `x-phb-nonce` (single-use signatures).
    pub require_read_nonce: bool,
}

/// Serves the ledger, health and reflection on `listener`, under `limits`
/// (connections, streams, buffered bytes, timeouts), until `shutdown`
/// resolves.
pub async fn serve(
    engine: Engine,
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LedgerServiceServer<LedgerApi>>()
        .await;
    // Writes can become impossible until a restart (a failed fsync): say so
    // on the health service, so operators and load balancers see it.
    // `WRITER_HEALTH_SERVICE` says whether this instance takes appends: the
    // writer of a shared log, or a writable instance alone on its own.
    let mut writable = engine.writable();
    let mut role = engine.role();
    tokio::spawn(async move {
        loop {
            let serving = *writable.borrow_and_update();
            let writes = serving && role.borrow_and_update().refuses_writes().is_none();
            if !serving {
                health_reporter
                    .set_not_serving::<LedgerServiceServer<LedgerApi>>()
                    .await;
            }
            let status = if writes {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health_reporter
                .set_service_status(WRITER_HEALTH_SERVICE, status)
                .await;
            tokio::select! {
                changed = writable.changed() => if changed.is_err() { break },
                changed = role.changed() => if changed.is_err() { break },
            }
        }
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(phb_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(phb_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let api = LedgerApi::new(engine, options.require_read_nonce);
    let stopping = api.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let ledger = LedgerServiceServer::new(api)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ledger);
    server::run(listener, limits, options.tls, routes, shutdown).await
}

/// The address a listener is bound to, for logs.
pub fn local_addr(l: &tokio::net::TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
