//! The codec the generated client and server use: prost's, with decode
//! errors given the status code that says whose fault they are.
//!
//! tonic-prost answers every message that does not decode with INTERNAL, as
//! gRPC's status-code guide suggests for a peer's malformed message. For a
//! request that tells the caller "the server failed", so partners retry or
//! report a server bug when the fault is in the bytes they sent. A request
//! that does not decode is the caller's to fix: INVALID_ARGUMENT, with the
//! message type and prost's reason. A response that does not decode is
//! still INTERNAL on the client: there the fault is the server's.

use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

/// Which side of a call a message travels on, so the decoder knows whose
/// fault bytes that do not decode are. Every message a service method takes
/// or returns implements it: a new method whose messages lack it does not
/// compile, which forces the choice to be made.
pub trait Wire {
    /// True for messages that clients send (requests).
    const IS_REQUEST: bool;
}

macro_rules! wire {
    ($is_request:expr => $($t:ty),+ $(,)?) => {
        $(impl Wire for $t { const IS_REQUEST: bool = $is_request; })+
    };
}

wire!(true =>
    crate::v1::AppendRequest,
    crate::v1::GetBalanceRequest,
    crate::v1::ListBalancesRequest,
    crate::v1::ReadLogRequest,
    crate::v1::GetHoldingsRequest,
    crate::v1::GetBudgetStatementRequest,
    crate::v1::GetCarePlanRequest,
    crate::v1::ListFlagsRequest,
    crate::v1::GetSpendingSummaryRequest,
    crate::v1::GetQuarterlyReturnRequest,
    crate::v1::GetCheckpointRequest,
    crate::v1::GetInclusionProofRequest,
    crate::v1::GetConsistencyProofRequest,
);
wire!(false =>
    crate::v1::AppendResponse,
    crate::v1::GetBalanceResponse,
    crate::v1::ListBalancesResponse,
    crate::v1::ReadLogResponse,
    crate::v1::GetHoldingsResponse,
    crate::v1::GetBudgetStatementResponse,
    crate::v1::GetCarePlanResponse,
    crate::v1::ListFlagsResponse,
    crate::v1::GetSpendingSummaryResponse,
    crate::v1::GetQuarterlyReturnResponse,
    crate::v1::GetCheckpointResponse,
    crate::v1::GetInclusionProofResponse,
    crate::v1::GetConsistencyProofResponse,
);

/// [`ProstCodec`] with decode errors mapped by [`Wire`]: INVALID_ARGUMENT
/// for requests, INTERNAL for responses.
#[derive(Debug, Clone)]
pub struct LedgerCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for LedgerCodec<T, U> {
    fn default() -> Self {
        LedgerCodec {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for LedgerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Wire + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LedgerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        LedgerDecoder {
            inner: self.inner.decoder(),
            _pd: PhantomData,
        }
    }
}

/// Decodes `U` with prost; see [`LedgerCodec`].
#[derive(Debug)]
pub struct LedgerDecoder<U> {
    inner: tonic_prost::ProstDecoder<U>,
    _pd: PhantomData<U>,
}

impl<U: Message + Default + Wire> Decoder for LedgerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner
            .decode(buf)
            .map_err(|s| decode_status::<U>(s.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// The status for a `U` that did not decode, `reason` being prost's words.
fn decode_status<U: Wire>(reason: &str) -> Status {
    let name = short_type_name::<U>();
    if U::IS_REQUEST {
        Status::invalid_argument(format!(
            "the request body is not a valid {name} message ({reason}); \
             encode it with code generated from proto/phb/ledger/v1/ledger.proto"
        ))
    } else {
        Status::internal(format!(
            "the server's answer is not a valid {name} message ({reason})"
        ))
    }
}

/// `AppendRequest` from `phb_proto::v1::AppendRequest`.
fn short_type_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_callers_fault_and_answers_the_servers() {
        let s = decode_status::<crate::v1::AppendRequest>("invalid wire type");
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("AppendRequest"), "{}", s.message());
        assert!(s.message().contains("invalid wire type"), "{}", s.message());
        let s = decode_status::<crate::v1::ReadLogResponse>("buffer underflow");
        assert_eq!(s.code(), tonic::Code::Internal);
    }
}
