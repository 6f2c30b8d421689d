//! The verifiable log on the wire: checkpoints, inclusion and consistency
//! proofs (docs/audit.md). Any registered organisation may ask: a proof
//! reveals hashes only.

use crate::status;
use phb_engine::Engine;
use phb_proto::v1 as pb;
use tonic::Status;

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{what}");
    Status::internal(format!("{what}: {e}"))
}

/// GetCheckpoint.
pub fn checkpoint(
    engine: &Engine,
    req: &pb::GetCheckpointRequest,
) -> Result<pb::GetCheckpointResponse, Status> {
    let (size, note) = if req.tree_size == 0 {
        engine
            .latest_checkpoint()
            .map_err(|e| internal("issuing a checkpoint failed", e))?
            .ok_or_else(|| {
                Status::not_found("the log is empty: there is nothing to checkpoint yet")
            })?
    } else {
        let v = engine.verifiable();
        let note = v.at(req.tree_size).ok_or_else(|| {
            Status::not_found(format!(
                "no checkpoint was issued at tree size {}; ask for tree_size 0 (the latest), or a size one was issued at (the latest is {})",
                req.tree_size,
                v.latest_size()
            ))
        })?;
        (req.tree_size, note.to_string())
    };
    let v = engine.verifiable();
    let root = v
        .root_at(size)
        .map_err(|e| internal("reading the tree", e))?;
    Ok(pb::GetCheckpointResponse {
        checkpoint: note,
        tree_size: size,
        root_hash: root.to_vec(),
        verifier_key: v.verifier_key(),
    })
}

/// GetInclusionProof.
pub fn inclusion(
    engine: &Engine,
    req: &pb::GetInclusionProofRequest,
) -> Result<pb::GetInclusionProofResponse, Status> {
    let v = engine.verifiable();
    let head = v.size();
    let size = if req.tree_size == 0 {
        head
    } else {
        req.tree_size
    };
    if req.sequence == 0 {
        return Err(status::invalid(
            "sequence",
            "sequence is required: the log sequence of the entry (1 or more)",
        ));
    }
    if size > head {
        return Err(Status::failed_precondition(format!(
            "tree_size {size} is beyond the log's {head} entries"
        )));
    }
    if req.sequence > size {
        return Err(status::invalid(
            "sequence",
            &format!(
                "sequence {} is not in a tree of {size} entries",
                req.sequence
            ),
        ));
    }
    let hashes = v
        .inclusion_proof(req.sequence - 1, size)
        .map_err(|e| internal("building an inclusion proof", e))?;
    let root = v
        .root_at(size)
        .map_err(|e| internal("reading the tree", e))?;
    drop(v);
    let entry = engine
        .read_log(req.sequence, 1)
        .map_err(|e| internal("reading the log", e))?
        .into_iter()
        .next()
        .ok_or_else(|| Status::internal("the entry is in the tree but could not be read"))?;
    Ok(pb::GetInclusionProofResponse {
        leaf_index: req.sequence - 1,
        tree_size: size,
        entry_hash: entry.hash.to_vec(),
        hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        root_hash: root.to_vec(),
    })
}

/// GetConsistencyProof.
pub fn consistency(
    engine: &Engine,
    req: &pb::GetConsistencyProofRequest,
) -> Result<pb::GetConsistencyProofResponse, Status> {
    let v = engine.verifiable();
    let head = v.size();
    let to = if req.to_size == 0 { head } else { req.to_size };
    if req.from_size == 0 {
        return Err(status::invalid("from_size", "from_size must be at least 1"));
    }
    if to > head {
        return Err(Status::failed_precondition(format!(
            "to_size {to} is beyond the log's {head} entries"
        )));
    }
    if req.from_size > to {
        return Err(status::invalid(
            "from_size",
            &format!("from_size {} is larger than to_size {to}", req.from_size),
        ));
    }
    let hashes = v
        .consistency_proof(req.from_size, to)
        .map_err(|e| internal("building a consistency proof", e))?;
    let from_root = v
        .root_at(req.from_size)
        .map_err(|e| internal("reading the tree", e))?;
    let to_root = v.root_at(to).map_err(|e| internal("reading the tree", e))?;
    Ok(pb::GetConsistencyProofResponse {
        from_size: req.from_size,
        to_size: to,
        hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        from_root_hash: from_root.to_vec(),
        to_root_hash: to_root.to_vec(),
    })
}
