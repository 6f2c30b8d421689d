//! The dashboard's only way to the ledger: the public gRPC API, every read
//! signed with the organisation's key (docs/api.md §8). No other access
//! path: the dashboard sees exactly what the organisation may see.

use crate::connect::Client;
use phb_client::{methods, Signer};
use phb_proto::v1 as pb;
use std::sync::Arc;

/// A refused or failed call, shown on the error page with the gRPC code.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        ApiError {
            code: crate::json_event::code_name(s.code() as i32),
            message: s.message().to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ApiError>;

/// Most pages a listing follows: a bound on one page view's work.
const MAX_PAGES: usize = 200;

/// The connection and the key it reads with.
#[derive(Clone)]
pub struct Api {
    pub client: Client,
    pub signer: Arc<Signer>,
    pub ledger_id: String,
}

impl Api {
    /// The organisation the dashboard reads as.
    pub fn org(&self) -> &str {
        &self.signer.id
    }

    pub async fn balances(&self, commissioner_id: &str) -> Result<Vec<pb::Balance>> {
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..MAX_PAGES {
            let req = self.signer.request(
                methods::LIST_BALANCES,
                pb::ListBalancesRequest {
                    commissioner_id: commissioner_id.to_string(),
                    page_size: 1000,
                    page_token: token,
                },
            );
            let page = self.client.clone().list_balances(req).await?.into_inner();
            out.extend(page.balances);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(out)
    }

    pub async fn balance(&self, budget_id: &str) -> Result<pb::Balance> {
        let req = self.signer.request(
            methods::GET_BALANCE,
            pb::GetBalanceRequest {
                budget_id: budget_id.to_string(),
            },
        );
        self.client
            .clone()
            .get_balance(req)
            .await?
            .into_inner()
            .balance
            .ok_or_else(|| ApiError {
                code: "NOT_FOUND",
                message: format!("no balance for {budget_id}"),
            })
    }

    /// The plan in force, or `None` if the budget has none yet.
    pub async fn care_plan(&self, budget_id: &str) -> Result<Option<pb::GetCarePlanResponse>> {
        let req = self.signer.request(
            methods::GET_CARE_PLAN,
            pb::GetCarePlanRequest {
                budget_id: budget_id.to_string(),
            },
        );
        match self.client.clone().get_care_plan(req).await {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => {
                // NOT_FOUND is both "no such budget" and "no plan yet"; the
                // page read the balance first, so here it means no plan.
                Ok(None)
            }
            Err(s) => Err(s.into()),
        }
    }

    pub async fn statement(&self, budget_id: &str) -> Result<Vec<pb::StatementRow>> {
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..MAX_PAGES {
            let req = self.signer.request(
                methods::GET_BUDGET_STATEMENT,
                pb::GetBudgetStatementRequest {
                    budget_id: budget_id.to_string(),
                    page_size: 1000,
                    page_token: token,
                },
            );
            let page = self
                .client
                .clone()
                .get_budget_statement(req)
                .await?
                .into_inner();
            out.extend(page.rows);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok(out)
    }

    /// Every flag matching `filter` (its page fields are ignored), and the
    /// head they were derived at.
    pub async fn flags(&self, filter: pb::ListFlagsRequest) -> Result<(Vec<pb::Flag>, u64)> {
        let mut out = Vec::new();
        let mut token = String::new();
        let mut head = 0;
        for _ in 0..MAX_PAGES {
            let req = self.signer.request(
                methods::LIST_FLAGS,
                pb::ListFlagsRequest {
                    page_size: 500,
                    page_token: token,
                    ..filter.clone()
                },
            );
            let page = self.client.clone().list_flags(req).await?.into_inner();
            out.extend(page.flags);
            head = page.head_sequence;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        Ok((out, head))
    }

    pub async fn holdings(&self, organisation_id: &str) -> Result<pb::GetHoldingsResponse> {
        let req = self.signer.request(
            methods::GET_HOLDINGS,
            pb::GetHoldingsRequest {
                organisation_id: organisation_id.to_string(),
            },
        );
        Ok(self.client.clone().get_holdings(req).await?.into_inner())
    }

    pub async fn summary(
        &self,
        commissioner_id: &str,
        from: &str,
        to: &str,
    ) -> Result<pb::GetSpendingSummaryResponse> {
        let req = self.signer.request(
            methods::GET_SPENDING_SUMMARY,
            pb::GetSpendingSummaryRequest {
                commissioner_id: commissioner_id.to_string(),
                from: from.to_string(),
                to: to.to_string(),
            },
        );
        Ok(self
            .client
            .clone()
            .get_spending_summary(req)
            .await?
            .into_inner())
    }

    pub async fn quarterly(
        &self,
        commissioner_id: &str,
        quarter: &str,
    ) -> Result<pb::GetQuarterlyReturnResponse> {
        let req = self.signer.request(
            methods::GET_QUARTERLY_RETURN,
            pb::GetQuarterlyReturnRequest {
                commissioner_id: commissioner_id.to_string(),
                quarter: quarter.to_string(),
            },
        );
        Ok(self
            .client
            .clone()
            .get_quarterly_return(req)
            .await?
            .into_inner())
    }

    /// Signs `kind` on `budget_id` with the organisation's key and appends
    /// it; the result's error (a refusal) is the caller's to show.
    pub async fn append(
        &self,
        event_id: &str,
        budget_id: &str,
        kind: phb_client::Kind,
    ) -> Result<pb::AppendResult> {
        let ev = phb_client::event(&self.ledger_id, event_id, budget_id, kind);
        let signed = self.signer.sign(&ev);
        let resp = self
            .client
            .clone()
            .append(pb::AppendRequest {
                events: vec![signed],
                atomic: false,
            })
            .await?
            .into_inner();
        resp.results.into_iter().next().ok_or_else(|| ApiError {
            code: "INTERNAL",
            message: "the server answered no result".into(),
        })
    }

    /// `ReadLog(follow)` from `from_sequence`: the stream of entries as
    /// they are committed (auditors and root only).
    pub async fn follow(
        &self,
        from_sequence: u64,
    ) -> Result<tonic::Streaming<pb::ReadLogResponse>> {
        let req = self.signer.request(
            methods::READ_LOG,
            pb::ReadLogRequest {
                from_sequence,
                follow: true,
            },
        );
        Ok(self.client.clone().read_log(req).await?.into_inner())
    }
}
