//! The registry: organisations, their roles and keys, and the root key.

use super::{Change, Ledger};
use crate::chain::{self, SignedEvent};
use crate::error::{quote, Reject};
use crate::event::{OrganisationChange, Role, ROOT_SIGNER};
use ed25519_dalek::VerifyingKey;

/// A registered organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organisation {
    /// Its id.
    pub id: String,
    /// Its roles, sorted.
    pub roles: Vec<Role>,
    /// Its current signing key.
    pub key: VerifyingKey,
}

impl Organisation {
    /// True if the organisation holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

impl Ledger {
    /// Every registered organisation, in id order.
    pub fn organisations(&self) -> impl Iterator<Item = &Organisation> {
        self.orgs.values()
    }

    /// An organisation by id.
    pub fn organisation(&self, id: &str) -> Option<&Organisation> {
        self.orgs.get(id)
    }

    /// The key `signer_id` signs with now.
    pub fn signer_key(&self, signer_id: &str) -> Option<&VerifyingKey> {
        if signer_id == ROOT_SIGNER {
            Some(&self.root_key)
        } else {
            self.orgs.get(signer_id).map(|o| &o.key)
        }
    }

    /// Verifies the signature under the signer's current key.
    pub fn authenticate(&self, signed: &SignedEvent) -> Result<(), Reject> {
        let key = self
            .signer_key(&signed.signer_id)
            .ok_or_else(|| Self::unknown_signer(&signed.signer_id))?;
        Self::verify_under(key, signed)
    }

    /// The refusal for a signer_id that is neither root nor registered.
    pub fn unknown_signer(signer_id: &str) -> Reject {
        Reject::unauthenticated(format!(
            "signer_id {} is not a registered organisation; ask the ledger operator to register it",
            quote(signer_id)
        ))
    }

    /// Verifies the signature of `signed` under `key` (the signer's key).
    pub fn verify_under(key: &VerifyingKey, signed: &SignedEvent) -> Result<(), Reject> {
        if signed.signature.len() != 64 {
            return Err(Reject::unauthenticated(format!(
                "signature must be 64 bytes of ed25519; got {}",
                signed.signature.len()
            )));
        }
        if !chain::verify_signature(key, &signed.event, &signed.signature) {
            return Err(Reject::unauthenticated(format!(
                "signature does not verify under the current key of {}; sign exactly the serialized event bytes with that key",
                quote(&signed.signer_id)
            )));
        }
        Ok(())
    }

    /// The organisation signing a budget event (never root).
    pub(super) fn budget_signer(&self, signer_id: &str) -> Result<&Organisation, Reject> {
        if signer_id == ROOT_SIGNER {
            return Err(Reject::denied(
                "the root key only registers organisations and rotates keys; budget events are signed by the organisation concerned",
            ));
        }
        self.orgs.get(signer_id).ok_or_else(|| {
            Reject::unauthenticated(format!("signer_id {} is not registered", quote(signer_id)))
        })
    }

    /// Registrations and key rotations (the caller checked root signed it).
    pub(super) fn decide_organisation(
        &self,
        change: OrganisationChange<'_>,
    ) -> Result<Change, Reject> {
        match change {
            OrganisationChange::Registered {
                organisation_id,
                roles,
                public_key,
            } => {
                if self.orgs.contains_key(organisation_id) {
                    return Err(Reject::exists(format!(
                        "organisation {organisation_id:?} is already registered; rotate its key with KeyRotated instead"
                    )));
                }
                let key = chain::parse_public_key(public_key).ok_or_else(|| {
                    Reject::invalid(
                        "kind.organisation_registered.public_key",
                        "public_key is not a valid, strong ed25519 public key",
                    )
                })?;
                Ok(Change::Organisation(Organisation {
                    id: organisation_id.to_string(),
                    roles: roles.to_vec(),
                    key,
                }))
            }
            OrganisationChange::KeyRotated {
                organisation_id,
                new_public_key,
            } => {
                let org = self.orgs.get(organisation_id).ok_or_else(|| {
                    Reject::not_found(format!(
                        "organisation {organisation_id:?} is not registered"
                    ))
                })?;
                let key = chain::parse_public_key(new_public_key).ok_or_else(|| {
                    Reject::invalid(
                        "kind.key_rotated.new_public_key",
                        "new_public_key is not a valid, strong ed25519 public key",
                    )
                })?;
                if key == org.key {
                    return Err(Reject::precondition(
                        "new_public_key is the organisation's current key",
                    ));
                }
                let mut org = org.clone();
                org.key = key;
                Ok(Change::Organisation(org))
            }
        }
    }
}
