"""What load.py, verify.py and ledgers.sh share: the generated stubs, signing
(docs/api.md §2 and §8, as examples/python/payroll_run.py does it), and
finding the instance that holds the writer role.

Stubs are generated from the repository's proto/ at first use into
$PHB_HA_DIR/stubs (grpcio-tools), so nothing generated is committed.
"""

import base64
import os
import secrets
import subprocess
import sys
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STATE_DIR = os.environ.get("PHB_HA_DIR", "/tmp/phb-ha")
STUBS = os.path.join(STATE_DIR, "stubs")
SERVICE = "/phb.ledger.v1.LedgerService/"
# grpc.health.v1 service names (crates/phb-grpc): reads on every instance,
# Append only on the writer.
READ_HEALTH = "phb.ledger.v1.LedgerService"
WRITER_HEALTH = "phb.ledger.v1.LedgerService/Append"
WRITER_METADATA = "x-phb-writer"


def load_stubs():
    """(ledger_pb2, ledger_pb2_grpc), generated from proto/ if missing or
    older than the .proto."""
    proto = os.path.join(REPO, "proto", "phb", "ledger", "v1", "ledger.proto")
    out = os.path.join(STUBS, "phb", "ledger", "v1", "ledger_pb2.py")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(proto):
        os.makedirs(STUBS, exist_ok=True)
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.join(REPO, 'proto')}",
                        f"--python_out={STUBS}", f"--grpc_python_out={STUBS}", proto], check=True)
    if STUBS not in sys.path:
        sys.path.insert(0, STUBS)
    from phb.ledger.v1 import ledger_pb2, ledger_pb2_grpc  # noqa: E402  (generated above)
    return ledger_pb2, ledger_pb2_grpc


pb, pb_grpc = load_stubs()

from nacl.signing import SigningKey  # noqa: E402


def read_key(path):
    """A secret key file: 64 hex characters of the ed25519 seed (root.key,
    ledger.key, and the keys load.py writes)."""
    with open(path, encoding="ascii") as f:
        return SigningKey(bytes.fromhex(f.read().strip()))


class Signer:
    """An organisation (or "root") and its ed25519 key."""

    def __init__(self, org_id, key):
        self.org_id = org_id
        self.key = key

    @property
    def public_key(self):
        return bytes(self.key.verify_key)

    def sign(self, event):
        # Serialize once and sign exactly those bytes: a retry resends them.
        data = event.SerializeToString()
        return pb.SignedEvent(event=data, signer_id=self.org_id, signature=self.key.sign(data).signature)

    def read_metadata(self, method):
        timestamp = str(int(time.time()))
        nonce = secrets.token_urlsafe(24)
        message = f"{SERVICE}{method}\n{timestamp}\n{nonce}".encode("ascii")
        signature = base64.b64encode(self.key.sign(message).signature).decode("ascii")
        return (("x-phb-org", self.org_id), ("x-phb-timestamp", timestamp), ("x-phb-nonce", nonce),
                ("x-phb-signature", signature))


# --- health ---------------------------------------------------------------
# grpc.health.v1.Health/Check by hand (HealthCheckRequest is one string
# field, HealthCheckResponse one enum): no extra package for two messages.

SERVING = 1


def _health_request(service):
    data = service.encode()
    assert len(data) < 128
    return b"\x0a" + bytes([len(data)]) + data


def _health_status(data):
    # field 1, varint: 0x08 then the value; absent means UNKNOWN (0).
    return data[1] if len(data) >= 2 and data[0] == 0x08 else 0


def health(channel, service, timeout=1.0):
    """The status of `service` (1 SERVING), or None if the call failed
    (unreachable, or NOT_FOUND: the service is not registered)."""
    call = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None,
                               response_deserializer=None)
    try:
        return _health_status(call(_health_request(service), timeout=timeout))
    except grpc.RpcError:
        return None


class Channels:
    """One plaintext channel per address, reused."""

    def __init__(self):
        self.channels = {}

    def get(self, address):
        if address not in self.channels:
            self.channels[address] = grpc.insecure_channel(address)
        return self.channels[address]

    def writer(self, addresses, timeout=1.0):
        """The address whose health says it holds the writer role. A server
        that registers no writer health service (a single instance on the
        file backend) is its own writer."""
        fallback = None
        for a in addresses:
            status = health(self.get(a), WRITER_HEALTH, timeout)
            if status == SERVING:
                return a
            if status is None and len(addresses) == 1 and health(self.get(a), READ_HEALTH, timeout) == SERVING:
                fallback = a
        return fallback


def writer_from_error(error):
    """The writer's address a refusing reader named in its trailing
    metadata, if any."""
    try:
        for key, value in error.trailing_metadata() or ():
            if key == WRITER_METADATA and value:
                return value
    except Exception:  # noqa: BLE001  (a failed call may carry no metadata object)
        return None
    return None
