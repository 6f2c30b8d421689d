"""Cross-file checks for deploy/ that no schema can make: the files must agree
with each other and with the server's own reading of the configurations.

Run by deploy/check.sh as `python checks.py PHB_LEDGER_BIN RENDERED_K8S_YAML`
(the second is `kubectl kustomize deploy/kubernetes`' output). Needs PyYAML.
Prints each failed check and exits 1 if there was one.
"""

import os
import re
import subprocess
import sys

import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def server_settings(binary, toml):
    """The settings as `serve --config toml` would see them, with no
    PHB_LEDGER_* from this environment (a stray one would mask the file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHB_")}
    out = subprocess.run(
        [binary, "config", "check", toml], env=env, capture_output=True, text=True, check=True
    ).stdout
    settings = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+)\s+= (.*?)  \((\w+)\)$", line)
        if m:
            settings[m.group(1)] = m.group(2)
    return settings


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def dockerfile():
    text = open(os.path.join(DEPLOY, "Dockerfile")).read()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    final = text.split("\nFROM ")[-1]  # the runtime stage
    instr = {}
    for line in final.splitlines():
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instr.setdefault(word.upper(), []).append(rest.strip())
    return instr


def main(binary, rendered):
    d = dockerfile()
    container = server_settings(binary, os.path.join(DEPLOY, "container", "phb-ledger.toml"))
    kube = server_settings(binary, os.path.join(DEPLOY, "kubernetes", "phb-ledger.toml"))
    host = server_settings(binary, os.path.join(DEPLOY, "phb-ledger.toml"))

    # --- the image ---------------------------------------------------------
    uid = d["USER"][0].split(":")[0]
    check(uid.isdigit() and int(uid) != 0, f"Dockerfile USER must be a numeric non-root uid, is {uid}")
    volume = yaml.safe_load(d["VOLUME"][0])[0]
    check(container["storage.data"] == volume,
          f"container config storage.data {container['storage.data']} is not the image's VOLUME {volume}")
    exposed = {int(p) for p in " ".join(d["EXPOSE"]).split()}
    grpc_port = port_of(container["server.listen"])
    check(container["server.listen"].startswith("0.0.0.0:"),
          "container config must listen on 0.0.0.0 (the published port decides who reaches it)")
    metrics_env = dict(re.findall(r"(PHB_LEDGER_METRICS_LISTEN)=(\S+)", " ".join(d["ENV"])))
    metrics_port = port_of(metrics_env["PHB_LEDGER_METRICS_LISTEN"])
    check(exposed == {grpc_port, metrics_port}, f"EXPOSE {sorted(exposed)} != gRPC {grpc_port} + metrics {metrics_port}")
    cmd = yaml.safe_load(d["CMD"][0])
    config_path = cmd[cmd.index("--config") + 1]
    check(any(c.endswith(" " + config_path) and "container/phb-ledger.toml" in c for c in d["COPY"]),
          f"the image's CMD reads {config_path}, which no COPY of deploy/container/phb-ledger.toml writes")
    check(d.get("STOPSIGNAL") == ["SIGTERM"], "STOPSIGNAL must be SIGTERM (the clean stop)")
    check("HEALTHCHECK" in d and "/readyz" in d["HEALTHCHECK"][0], "the image needs a HEALTHCHECK on /readyz")

    # --- docker-compose ----------------------------------------------------
    compose = yaml.safe_load(open(os.path.join(DEPLOY, "docker-compose.yml")))
    svc = compose["services"]["phb-ledger"]
    for p in svc["ports"]:
        check(str(p).startswith("127.0.0.1:"), f"compose publishes {p} beyond 127.0.0.1")
    published = {int(str(p).rsplit(":", 1)[1]) for p in svc["ports"]}
    check(published == {grpc_port, metrics_port}, f"compose publishes {published}, the image serves {grpc_port}, {metrics_port}")
    check(any(v.split(":")[1] == volume for v in svc["volumes"]), f"compose mounts no volume at {volume}")
    check(svc.get("stop_grace_period") == "30s", "compose stop_grace_period must be 30s")
    check(svc.get("env_file") == "phb-ledger.env", "compose must read phb-ledger.env (the root public key)")
    check(port_of(svc["environment"]["PHB_LEDGER_METRICS_LISTEN"]) == metrics_port,
          "compose's PHB_LEDGER_METRICS_LISTEN port differs from the image's")
    prom = yaml.safe_load(open(os.path.join(DEPLOY, "prometheus.yml")))
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    check(targets == [f"phb-ledger:{metrics_port}"], f"Prometheus scrapes {targets}, not phb-ledger:{metrics_port}")
    check(any("prometheus.yml" in v for v in compose["services"]["prometheus"]["volumes"]),
          "compose's prometheus does not mount prometheus.yml")

    # --- Kubernetes (as rendered by kustomize) -----------------------------
    docs = [x for x in yaml.safe_load_all(open(rendered)) if x]
    by_kind = {}
    for x in docs:
        by_kind.setdefault(x["kind"], []).append(x)
    sts = by_kind["StatefulSet"][0]
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    check(spec["replicas"] == 1, "the StatefulSet must have exactly one replica (one writer per data directory)")
    check(pod.get("terminationGracePeriodSeconds") == 30, "terminationGracePeriodSeconds must be 30")
    check(pod.get("enableServiceLinks") is False, "enableServiceLinks must be false (PHB_LEDGER_ env prefix)")
    psc, csc = pod["securityContext"], c["securityContext"]
    check(psc.get("runAsNonRoot") is True and str(psc.get("runAsUser")) == uid,
          f"pod must run as non-root uid {uid} (the image's)")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccompProfile must be RuntimeDefault")
    check(csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
          and csc.get("capabilities", {}).get("drop") == ["ALL"],
          "container: readOnlyRootFilesystem, no privilege escalation, drop ALL")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("grpc") == port_of(kube["server.listen"]), "containerPort grpc differs from the ConfigMap's listen port")
    env = {e["name"]: e for e in c["env"]}
    check(port_of(env["PHB_LEDGER_METRICS_LISTEN"]["value"]) == ports.get("metrics"),
          "containerPort metrics differs from PHB_LEDGER_METRICS_LISTEN")
    for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") == "metrics", f"{probe} must GET {path} on port metrics")
    ref = env["PHB_LEDGER_ROOT_PUBLIC_KEY"]["valueFrom"]["secretKeyRef"]
    secret = yaml.safe_load(open(os.path.join(DEPLOY, "kubernetes", "secret.example.yaml")))
    check(ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"],
          "the root key's secretKeyRef does not match secret.example.yaml")
    check(not ref.get("optional"), "the root public key must not be optional")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    check(kube["storage.data"].startswith(mounts["data"] + "/"),
          f"storage.data {kube['storage.data']} is not inside the volume at {mounts['data']}")
    check(c["args"][c["args"].index("--config") + 1] == mounts["config"] + "/phb-ledger.toml",
          "the container's --config is not the mounted ConfigMap's phb-ledger.toml")
    cm_name = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "config")
    cms = [x for x in by_kind.get("ConfigMap", []) if x["metadata"]["name"] == cm_name]
    check(len(cms) == 1 and cms[0]["data"]["phb-ledger.toml"] == open(os.path.join(DEPLOY, "kubernetes", "phb-ledger.toml")).read(),
          "the mounted ConfigMap is not kubernetes/phb-ledger.toml")
    claim = spec["volumeClaimTemplates"][0]
    check(claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"],
          "the data volume must be a ReadWriteOnce claim template named data")
    service = by_kind["Service"][0]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    check(all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), "the Service selects no pod of the StatefulSet")
    check({p["targetPort"] for p in service["spec"]["ports"]} == set(ports), "the Service's targetPorts are not the container's ports")
    check(sts["spec"]["serviceName"] == service["metadata"]["name"], "serviceName does not name the Service")
    check("PodDisruptionBudget" not in by_kind, "a PDB with one replica blocks node drains (deploy/README.md)")

    # --- systemd ----------------------------------------------------------
    unit = dict(re.findall(r"^(\w+)=(.*)$", open(os.path.join(DEPLOY, "phb-ledger.service")).read(), re.M))
    check(host["storage.data"] == "/var/lib/" + unit["StateDirectory"],
          f"phb-ledger.toml's storage.data {host['storage.data']} is not the unit's StateDirectory")
    check(unit["TimeoutStopSec"] == "30", "TimeoutStopSec must be 30")
    check(unit["ExecStart"].endswith("--config /etc/" + unit["ConfigurationDirectory"] + "/phb-ledger.toml"),
          "ExecStart does not read the ConfigurationDirectory's phb-ledger.toml")

    for f in failures:
        print("  FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
