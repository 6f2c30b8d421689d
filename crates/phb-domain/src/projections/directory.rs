//! The directory: who may sign and read, folded from registrations and key
//! rotations.

use super::snapshot::{Format, SnapshotError, SnapshotReader, SnapshotWriter};
use super::{Committed, Projection};
use crate::chain::parse_public_key;
use crate::event::{EventKind, ROOT_SIGNER};
use crate::ledger::{Organisation, Reader};
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;

/// The root key and every registered organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    root_key: VerifyingKey,
    orgs: BTreeMap<String, Organisation>,
}

impl Directory {
    /// A directory with only the root key.
    pub fn new(root_key: VerifyingKey) -> Directory {
        Directory {
            root_key,
            orgs: BTreeMap::new(),
        }
    }

    /// An organisation by id.
    pub fn organisation(&self, id: &str) -> Option<&Organisation> {
        self.orgs.get(id)
    }

    /// Every registered organisation, in id order.
    pub fn organisations(&self) -> impl Iterator<Item = &Organisation> {
        self.orgs.values()
    }

    /// The key `signer_id` signs with now.
    pub fn signer_key(&self, signer_id: &str) -> Option<&VerifyingKey> {
        if signer_id == ROOT_SIGNER {
            Some(&self.root_key)
        } else {
            self.orgs.get(signer_id).map(|o| &o.key)
        }
    }

    /// Who `org_id` is as a reader, if anyone.
    pub fn reader(&self, org_id: &str) -> Option<Reader<'_>> {
        if org_id == ROOT_SIGNER {
            Some(Reader::Root)
        } else {
            self.orgs.get(org_id).map(Reader::Organisation)
        }
    }
}

/// The `Directory`'s snapshot: its header, the root key, then every
/// organisation in id order (id, roles, key).
const FORMAT: Format = Format {
    tag: *b"DIRS",
    version: 1,
};

impl Directory {
    pub(super) fn write(&self, w: &mut SnapshotWriter<'_>) {
        w.header(FORMAT);
        w.key(&self.root_key);
        w.seq(self.orgs.values(), |w, o| {
            w.str(&o.id);
            w.seq(&o.roles, |w, r| w.role(*r));
            w.key(&o.key);
        });
    }

    pub(super) fn read(r: &mut SnapshotReader<'_>) -> Result<Directory, SnapshotError> {
        r.header(FORMAT)?;
        let root_key = r.any_key()?;
        let orgs = r.map(|r| {
            let id = r.string()?;
            let at = r.position();
            let roles = r.seq(SnapshotReader::read_role)?;
            if roles.is_empty() || !roles.windows(2).all(|w| w[0] < w[1]) {
                return Err(SnapshotReader::bad(
                    at,
                    "roles not sorted, repeated or none",
                ));
            }
            let key = r.strong_key()?;
            Ok((id.clone(), Organisation { id, roles, key }))
        })?;
        Ok(Directory { root_key, orgs })
    }
}

impl Projection for Directory {
    fn apply(&mut self, c: &Committed<'_>) {
        if !c.applied() {
            return;
        }
        let key = |bytes| {
            parse_public_key(bytes).expect("committed keys were checked by the write model")
        };
        match &c.event.kind {
            EventKind::OrganisationRegistered {
                organisation_id,
                roles,
                public_key,
            } => {
                self.orgs.insert(
                    organisation_id.clone(),
                    Organisation {
                        id: organisation_id.clone(),
                        roles: roles.clone(),
                        key: key(public_key),
                    },
                );
            }
            EventKind::KeyRotated {
                organisation_id,
                new_public_key,
            } => {
                if let Some(o) = self.orgs.get_mut(organisation_id) {
                    o.key = key(new_public_key);
                }
            }
            _ => {}
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        self.write(&mut SnapshotWriter::new(out));
    }

    fn decode(bytes: &[u8]) -> Result<Directory, SnapshotError> {
        SnapshotReader::read_all(bytes, Directory::read)
    }
}
