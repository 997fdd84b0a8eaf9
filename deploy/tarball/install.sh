#!/bin/sh
# install.sh: installs tally's agent or collector from this release tarball,
# for systemd or OpenRC (detected). POSIX sh; it downloads nothing. Run it as
# root in the unpacked directory; `sh install.sh --help` says how.
#
# Running it again upgrades in place: the binary is replaced and the service
# restarted; the agent adopts the counters it pinned in the kernel, so no
# byte is lost. Settings already in /etc/tally are kept, except those given
# on the command line.
set -eu

usage() {
    cat <<'EOF'
Usage:
  sh install.sh agent [--collector URL] [--ca FILE] [--token-file FILE|-]
  sh install.sh collector
  sh install.sh --uninstall [--purge]

  agent            the node agent: binary, user tally-agent, service,
                   /etc/tally/agent.env; started when it has a token
  collector        the collector: binary, service, /etc/tally/collector.env
                   (root only; set DATABASE_URL and the tokens there, the TLS
                   certificate and key in /etc/tally/tls/, then start it)
  --collector URL  the agent's collector (TALLY_COLLECTOR), e.g.
                   https://collector.example:50051
  --ca FILE        the CA certificate that signed the collector's certificate
                   (installed as /etc/tally/ca.pem, TALLY_CA)
  --token-file F   the node's token (from `tally-collector node add NAME`),
                   installed as /etc/tally/agent.token (mode 0600); `-` reads
                   it from stdin
  --prefix DIR     where the binaries go: DIR/bin (default /usr/local)
  --init NAME      systemd or openrc (default: the one running)
  --no-start       install, but start or restart nothing
  --uninstall      stop and remove what this script installed, the settings,
                   the token and the agent's state directory; the agent's
                   pinned counters stay (a later install adopts them)
  --purge          with --uninstall: also detach the agent's programs and
                   remove its pinned counters
  -h, --help       this text

The tally-agent and tally-collector users stay after --uninstall, as do the
TLS files in /etc/tally/tls.
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

say() {
    echo "install.sh: $*"
}

here=$(cd "$(dirname "$0")" && pwd)
role=
collector_url=
ca=
token_file=
prefix=/usr/local
init=
start=true
uninstall=false
purge=false

needs_value() {
    [ "$2" -ge 2 ] || die "$1 needs a value (see --help)"
}

while [ $# -gt 0 ]; do
    case $1 in
    agent | collector)
        [ -z "$role" ] || die "give one of agent and collector"
        role=$1
        ;;
    --collector) needs_value "$1" $#; collector_url=$2; shift ;;
    --collector=*) collector_url=${1#*=} ;;
    --ca) needs_value "$1" $#; ca=$2; shift ;;
    --ca=*) ca=${1#*=} ;;
    --token-file) needs_value "$1" $#; token_file=$2; shift ;;
    --token-file=*) token_file=${1#*=} ;;
    --prefix) needs_value "$1" $#; prefix=$2; shift ;;
    --prefix=*) prefix=${1#*=} ;;
    --init) needs_value "$1" $#; init=$2; shift ;;
    --init=*) init=${1#*=} ;;
    --no-start) start=false ;;
    --uninstall) uninstall=true ;;
    --purge) purge=true ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

if $uninstall; then
    [ -z "$role" ] || die "--uninstall removes both; give no agent or collector"
else
    [ -n "$role" ] || die "say what to install: agent or collector (see --help)"
    ! $purge || die "--purge goes with --uninstall"
fi
if [ "$role" != agent ] && { [ -n "$collector_url" ] || [ -n "$ca" ] || [ -n "$token_file" ]; }; then
    die "--collector, --ca and --token-file are the agent's"
fi
[ "$(id -u)" = 0 ] || die "run as root"
case $prefix in
/*) ;;
*) die "--prefix must be an absolute path" ;;
esac
bindir=$prefix/bin

if [ -z "$init" ]; then
    if [ -d /run/systemd/system ]; then
        init=systemd
    elif command -v openrc-run >/dev/null 2>&1; then
        init=openrc
    else
        die "neither systemd nor OpenRC runs here; give --init systemd or --init openrc"
    fi
fi
case $init in
systemd | openrc) ;;
*) die "--init takes systemd or openrc, not $init" ;;
esac

# Sets NAME=VALUE in an environment file: replaces the first NAME= or
# #NAME= line, or appends one. Keeps the file's owner and mode.
set_env_var() {
    file=$1 name=$2 value=$3
    awk -v name="$name" -v value="$value" '
        !done && ($0 ~ "^#?" name "=") { print name "=" value; done = 1; next }
        { print }
        END { if (!done) print name "=" value }
    ' "$file" >"$file.install-sh"
    cat "$file.install-sh" >"$file"
    rm -f "$file.install-sh"
}

# Copies a binary of the tarball into $bindir, replacing the old one in one
# step (a running service keeps its old copy until it restarts).
install_binary() {
    "$here/$1" --version >/dev/null 2>&1 || die "$here/$1 does not run here (another CPU?)"
    install -d -m 0755 "$bindir"
    install -m 0755 "$here/$1" "$bindir/.$1.install-sh"
    mv -f "$bindir/.$1.install-sh" "$bindir/$1"
    say "installed $bindir/$1 ($("$bindir/$1" --version))"
}

# A file of the tarball with the binaries' path set to $bindir.
with_bindir() {
    sed "s#/usr/bin/tally-#$bindir/tally-#g" "$1"
}

# A system user and group (for OpenRC; systemd uses sysusers.d).
ensure_user() {
    id -u "$1" >/dev/null 2>&1 && return 0
    nologin=/bin/false
    for shell in /usr/sbin/nologin /sbin/nologin; do
        if [ -x "$shell" ]; then
            nologin=$shell
            break
        fi
    done
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell "$nologin" "$1"
    else
        addgroup -S "$1"
        adduser -S -D -H -h /nonexistent -s "$nologin" -G "$1" "$1"
    fi
    say "created the system user $1"
}

install_token() {
    [ -n "$token_file" ] || return 0
    if [ "$token_file" = - ]; then
        IFS= read -r token || true
    else
        [ -r "$token_file" ] || die "cannot read the token file $token_file"
        IFS= read -r token <"$token_file" || true
    fi
    [ -n "${token:-}" ] || die "the token is empty"
    old_umask=$(umask)
    umask 077
    printf '%s\n' "$token" >/etc/tally/.agent.token.install-sh
    umask "$old_umask"
    mv -f /etc/tally/.agent.token.install-sh /etc/tally/agent.token
    say "installed /etc/tally/agent.token"
}

install_agent() {
    install_binary tally-agent
    install -d -m 0755 /etc/tally
    env=/etc/tally/agent.env
    if [ ! -e "$env" ]; then
        install -m 0644 "$here/systemd/tally-agent.env.example" "$env"
        say "installed $env"
    fi
    [ -z "$collector_url" ] || set_env_var "$env" TALLY_COLLECTOR "$collector_url"
    if [ -n "$ca" ]; then
        install -m 0644 "$ca" /etc/tally/ca.pem
        set_env_var "$env" TALLY_CA /etc/tally/ca.pem
    fi
    install_token
    case $init in
    systemd)
        install -d -m 0755 /etc/sysusers.d /etc/tmpfiles.d /etc/systemd/system
        install -m 0644 "$here/systemd/tally-agent.sysusers" /etc/sysusers.d/tally-agent.conf
        install -m 0644 "$here/systemd/tally-agent.tmpfiles" /etc/tmpfiles.d/tally-agent.conf
        systemd-sysusers tally-agent.conf
        systemd-tmpfiles --create tally-agent.conf
        for unit in tally-agent.service tally-agent-pin-dir.service; do
            with_bindir "$here/systemd/$unit" >"/etc/systemd/system/$unit"
            chmod 0644 "/etc/systemd/system/$unit"
        done
        [ ! -e /etc/tally/agent.token ] || chmod 0600 /etc/tally/agent.token
        systemctl daemon-reload
        ;;
    openrc)
        ensure_user tally-agent
        install -d -m 0755 /etc/init.d
        with_bindir "$here/openrc/tally-agent" >/etc/init.d/tally-agent
        chmod 0755 /etc/init.d/tally-agent
        # No credentials under OpenRC: the agent reads its token itself.
        if [ -e /etc/tally/agent.token ]; then
            chown tally-agent:tally-agent /etc/tally/agent.token
            chmod 0400 /etc/tally/agent.token
        fi
        ;;
    esac
    if [ ! -s /etc/tally/agent.token ]; then
        say "tally-agent not started: no token in /etc/tally/agent.token"
        say "  run again with --token-file FILE (from \`tally-collector node add NAME\`)"
        return 0
    fi
    $start || return 0
    case $init in
    systemd)
        systemctl enable tally-agent.service
        systemctl restart tally-agent.service
        ;;
    openrc)
        rc-update add tally-agent default
        rc-service tally-agent restart
        ;;
    esac
    say "tally-agent (re)started"
}

install_collector() {
    install_binary tally-collector
    install -d -m 0755 /etc/tally /etc/tally/tls
    env=/etc/tally/collector.env
    if [ ! -e "$env" ]; then
        install -m 0600 "$here/systemd/tally-collector.env.example" "$env"
        say "installed $env (root only): set DATABASE_URL and the tokens there"
    fi
    case $init in
    systemd)
        install -d -m 0755 /etc/systemd/system
        with_bindir "$here/systemd/tally-collector.service" >/etc/systemd/system/tally-collector.service
        chmod 0644 /etc/systemd/system/tally-collector.service
        systemctl daemon-reload
        running() { systemctl is-active --quiet tally-collector.service; }
        restart() { systemctl restart tally-collector.service; }
        how="systemctl enable --now tally-collector"
        ;;
    openrc)
        ensure_user tally-collector
        install -d -m 0755 /etc/init.d
        with_bindir "$here/openrc/tally-collector" >/etc/init.d/tally-collector
        chmod 0755 /etc/init.d/tally-collector
        running() { rc-service tally-collector status >/dev/null 2>&1; }
        restart() { rc-service tally-collector restart; }
        how="rc-update add tally-collector default && rc-service tally-collector start"
        ;;
    esac
    if running; then
        if $start; then
            restart
            say "tally-collector restarted"
        fi
    else
        say "tally-collector not started: set DATABASE_URL and the tokens in $env,"
        say "  put collector.crt and collector.key in /etc/tally/tls/, then: $how"
    fi
}

uninstall_one() {
    name=$1
    case $init in
    systemd)
        if [ -e "/etc/systemd/system/$name.service" ]; then
            systemctl disable --now "$name.service" || true
        fi
        rm -f "/etc/systemd/system/$name.service"
        if [ "$name" = tally-agent ]; then
            rm -f /etc/systemd/system/tally-agent-pin-dir.service \
                /etc/sysusers.d/tally-agent.conf /etc/tmpfiles.d/tally-agent.conf
        fi
        systemctl daemon-reload
        ;;
    openrc)
        if [ -e "/etc/init.d/$name" ]; then
            rc-service "$name" stop || true
            rc-update del "$name" default >/dev/null 2>&1 || true
        fi
        rm -f "/etc/init.d/$name"
        ;;
    esac
    if [ "$name" = tally-agent ]; then
        if $purge && [ -x "$bindir/tally-agent" ]; then
            # Every attachment and pin it made (clsact filters too).
            "$bindir/tally-agent" detach || true
        fi
        $purge && rm -rf /sys/fs/bpf/tally
        rm -rf /var/lib/tally-agent
        rm -f /etc/tally/agent.env /etc/tally/agent.token /etc/tally/ca.pem
    else
        rm -f /etc/tally/collector.env
    fi
    rm -f "$bindir/$name" /var/log/"$name".log
    say "removed $name"
}

if $uninstall; then
    for name in tally-agent tally-collector; do
        if [ -e "$bindir/$name" ] || [ -e "/etc/systemd/system/$name.service" ] ||
            [ -e "/etc/init.d/$name" ]; then
            uninstall_one "$name"
        fi
    done
    rmdir /etc/tally/tls /etc/tally 2>/dev/null || true
    exit 0
fi

case $role in
agent) install_agent ;;
collector) install_collector ;;
esac
