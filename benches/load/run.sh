#!/usr/bin/env bash
# Load harness: cartable-node side by side with nginx, same files, same TLS
# certificate and key, same URL shape, measured with wrk (HTTP/1.1 over TLS).
# See benches/load/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benches/load/run.sh [--quick] [--help]

  --quick   smoke test: DURATION=3s ROUNDS=1 WARMUP=1s

environment (defaults):
  CARTABLE_NODE  path of the node binary   (<repo>/target/release/cartable-node)
  DURATION       wrk duration of one run   (10s)
  ROUNDS         rounds; median is kept    (3)
  CONNECTIONS    wrk -c                    (32)
  THREADS        wrk -t                    (2; with SPLIT=1, the generator's cores)
  CLIENT         wrk (HTTP/1.1) or h2load (HTTP/2)        (wrk)
  STREAMS        h2load -m: streams per connection        (8)
  WARMUP         warm-up per target/file before the rounds, 0 = none (2s)
  RESULTS        where the summary is written (<repo>/benches/load/last-run.txt)
  SPLIT          1 = servers pinned to the upper half of the cores, the load
                 generator to the lower half, as on machines of their own
                 (taskset; nginx runs one worker per server core)
  SKIP_NODE      1 = dry run: measure nginx only, with its own ECDSA P-256
                 certificate and a placeholder bundle id; the node is not run
EOF
}

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/../.." && pwd)

QUICK=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

CARTABLE_NODE=${CARTABLE_NODE:-$ROOT/target/release/cartable-node}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
SPLIT=${SPLIT:-0}
CLIENT=${CLIENT:-wrk}
STREAMS=${STREAMS:-8}
WARMUP=${WARMUP:-2s}
RESULTS=${RESULTS:-$ROOT/benches/load/last-run.txt}
SKIP_NODE=${SKIP_NODE:-0}

# Where the servers and the generator run. Shared cores make the generator's
# own threads' time slices part of every latency measured; SPLIT=1 gives each
# side cores of its own.
CORES=$(nproc)
SERVER_PIN=()
CLIENT_PIN=()
SERVER_CORES=$CORES
case $SPLIT in
    0) THREADS=${THREADS:-2} ;;
    1)
        ((CORES >= 2)) || { echo "run.sh: SPLIT=1 needs at least 2 cores (nproc=$CORES)" >&2; exit 2; }
        CLIENT_CORES=$((CORES / 2))
        SERVER_CORES=$((CORES - CLIENT_CORES))
        CLIENT_PIN=(taskset -c "0-$((CLIENT_CORES - 1))")
        SERVER_PIN=(taskset -c "$CLIENT_CORES-$((CORES - 1))")
        THREADS=${THREADS:-$CLIENT_CORES}
        ;;
    *) echo "run.sh: SPLIT must be 0 or 1 (got '$SPLIT')" >&2; exit 2 ;;
esac
if ((QUICK)); then
    DURATION=3s
    ROUNDS=1
    WARMUP=1s
fi

log() { printf '[load] %s\n' "$*" >&2; }
die() { printf '[load] error: %s\n' "$*" >&2; exit 1; }

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer (got '$CONNECTIONS')"
[[ $CLIENT == wrk || $CLIENT == h2load ]] || die "CLIENT must be wrk or h2load (got '$CLIENT')"
[[ $STREAMS =~ ^[1-9][0-9]*$ ]] || die "STREAMS must be a positive integer (got '$STREAMS')"
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer (got '$THREADS')"
((THREADS <= CONNECTIONS)) || die "THREADS ($THREADS) must not exceed CONNECTIONS ($CONNECTIONS)"
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "DURATION must look like 10s, 2m (got '$DURATION')"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s or 0 (got '$WARMUP')"

# ---------------------------------------------------------------- tools
# nginx lives in /usr/sbin, which is not on every user's PATH.
PATH=$PATH:/usr/sbin:/sbin

ensure_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v wrk >/dev/null || missing+=(wrk)
    [[ $CLIENT != h2load ]] || command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v python3 >/dev/null || missing+=(python3)
    ((${#missing[@]} == 0)) && return 0

    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "missing ${missing[*]} and not root (no sudo): install them first"
        sudo=(sudo)
    fi
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    log "installing: ${missing[*]}"
    if ! "${apt[@]}" install -y "${missing[@]}"; then
        log "apt-get install failed; running apt-get update and retrying"
        "${apt[@]}" update
        if ! "${apt[@]}" install -y "${missing[@]}"; then
            # nginx-light is gone from newer Debian releases: fall back to nginx.
            local i
            for i in "${!missing[@]}"; do
                [[ ${missing[$i]} == nginx-light ]] && missing[i]=nginx
            done
            "${apt[@]}" install -y "${missing[@]}"
        fi
    fi
    if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
        die "nginx or wrk still missing after install"
    fi
}
ensure_tools

if [[ $SKIP_NODE != 1 ]]; then
    # A bare name is looked up on PATH; a relative path is taken from the cwd if
    # it exists there, else from the repo root.
    if [[ $CARTABLE_NODE != */* ]]; then
        CARTABLE_NODE=$(command -v "$CARTABLE_NODE" || echo "$CARTABLE_NODE")
    elif [[ $CARTABLE_NODE != /* ]]; then
        if [[ -e $CARTABLE_NODE ]]; then
            CARTABLE_NODE=$PWD/$CARTABLE_NODE
        else
            CARTABLE_NODE=$ROOT/$CARTABLE_NODE
        fi
    fi
    [[ -x $CARTABLE_NODE ]] || die "no executable node at '$CARTABLE_NODE' (build it: cargo build --release -p cartable-node, or set CARTABLE_NODE, or SKIP_NODE=1 for an nginx-only dry run)"
fi

# ---------------------------------------------------------------- work dir and cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cartable-load.XXXXXX")
NODE_PID=
NGINX_PIDFILE=$WORK/nginx/nginx.pid

stop_pid() { # pid: TERM, up to 5 s, then KILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    if [[ -s $NGINX_PIDFILE ]]; then
        stop_pid "$(cat "$NGINX_PIDFILE")"
    fi
    if [[ -n $NODE_PID ]]; then
        stop_pid "$NODE_PID"
        wait "$NODE_PID" 2>/dev/null
    fi
    rm -rf -- "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$WORK/lesson" "$WORK/node" "$WORK/nginx/logs" "$WORK/nginx/tmp" "$WORK/wrk"

# ---------------------------------------------------------------- lesson
SMALL_BYTES=16384
LARGE_BYTES=8388608
head -c "$SMALL_BYTES" /dev/urandom >"$WORK/lesson/small.bin"
head -c "$LARGE_BYTES" /dev/urandom >"$WORK/lesson/large.bin"
log "lesson: $WORK/lesson (small.bin 16 KiB, large.bin 8 MiB)"

# ---------------------------------------------------------------- node
CERT=$WORK/node/tls/cert.pem
KEY=$WORK/node/tls/key.pem
NODE_URL=
if [[ $SKIP_NODE == 1 ]]; then
    log "SKIP_NODE=1: nginx only, self-made ECDSA P-256 certificate, placeholder bundle id"
    mkdir -p "$WORK/node/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$KEY" -out "$CERT" -days 2 -subj /CN=localhost \
        -addext subjectAltName=IP:127.0.0.1,DNS:localhost 2>/dev/null
    BUNDLE=$(cat "$WORK/lesson/small.bin" "$WORK/lesson/large.bin" | sha256sum | cut -c1-64)
else
    log "starting node: $CARTABLE_NODE"
    : >"$WORK/node.out"
    : >"$WORK/node.err"
    # The load generator is one client network: exempt from the per-network
    # rate and share (nginx has none), as an operator exempts its own tools.
    printf '[[connections.networks]]\ncidr = "127.0.0.0/8"\nexempt = true\n' >"$WORK/node.toml"
    "${SERVER_PIN[@]}" "$CARTABLE_NODE" --config "$WORK/node.toml" serve --data-dir "$WORK/node" --https 127.0.0.1:0 \
        >"$WORK/node.out" 2>"$WORK/node.err" &
    NODE_PID=$!
    for ((i = 0; i < 300; i++)); do
        NODE_URL=$(awk '/^cartable-node listening / {
                for (i = 3; i <= NF; i++) if ($i ~ /^https=https:\/\//) { print substr($i, 7); exit }
            }' "$WORK/node.out")
        [[ -n $NODE_URL ]] && break
        if ! kill -0 "$NODE_PID" 2>/dev/null; then
            tail -n 20 "$WORK/node.out" "$WORK/node.err" >&2 || true
            NODE_PID=
            die "node exited before printing its 'cartable-node listening https=...' line"
        fi
        sleep 0.1
    done
    if [[ -z $NODE_URL ]]; then
        tail -n 20 "$WORK/node.out" "$WORK/node.err" >&2 || true
        die "node did not print 'cartable-node listening https=https://IP:PORT id=...' within 30 s"
    fi
    NODE_URL=${NODE_URL%/}
    log "node listening at $NODE_URL (pid $NODE_PID)"

    if ! timeout 300 "$CARTABLE_NODE" add --data-dir "$WORK/node" "$WORK/lesson" >"$WORK/add.out" 2>"$WORK/add.err"; then
        cat "$WORK/add.out" "$WORK/add.err" >&2 || true
        die "'cartable-node add --data-dir $WORK/node $WORK/lesson' failed or took over 300 s (it runs while 'serve' is up on the same data dir)"
    fi
    BUNDLE=$(head -n 1 "$WORK/add.out" | tr -d '[:space:]')
    [[ $BUNDLE =~ ^[0-9a-f]{64}$ ]] ||
        die "first line of 'cartable-node add' is not a 64-hex bundle id: '$(head -n 1 "$WORK/add.out")'"
    log "bundle $BUNDLE"

    for ((i = 0; i < 50; i++)); do
        [[ -s $CERT && -s $KEY ]] && break
        sleep 0.1
    done
    [[ -s $CERT && -s $KEY ]] || die "node did not write $CERT and $KEY"
fi
KEY_TYPE=$(openssl pkey -in "$KEY" -noout -text 2>/dev/null |
    awk '/^(Private-Key|ASN1 OID|NIST CURVE):/ { sub(/^ +/, ""); printf "%s%s", sep, $0; sep = "; " }') || true
log "TLS key: ${KEY_TYPE:-unknown} (shared by nginx and the node)"

# ---------------------------------------------------------------- nginx
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

write_nginx_conf() { # port
    local user_line=
    # As root, nginx workers would drop to 'nobody', who cannot read the 0700 work dir.
    ((EUID == 0)) && user_line='user root;'
    cat >"$WORK/nginx.conf" <<EOF
$user_line
worker_processes $SERVER_CORES;
daemon on;
pid $NGINX_PIDFILE;
error_log $WORK/nginx/error.log warn;

events {
    worker_connections 4096;
}

http {
    client_body_temp_path $WORK/nginx/tmp/client_body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;

    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server_tokens off;

    types {
        application/octet-stream bin;
    }
    default_type application/octet-stream;

    server {
        listen 127.0.0.1:$1 ssl http2;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;

        etag on;

        location /b/$BUNDLE/ {
            alias $WORK/lesson/;
            add_header Cache-Control "public, max-age=31536000, immutable";
            add_header X-Content-Type-Options nosniff;
        }
        location / {
            return 404;
        }
    }
}
EOF
}

NGINX_URL=
for attempt in 1 2 3; do
    NGINX_PORT=$(free_port)
    write_nginx_conf "$NGINX_PORT"
    if "${SERVER_PIN[@]}" nginx -e "$WORK/nginx/error.log" -c "$WORK/nginx.conf" -p "$WORK/nginx" 2>"$WORK/nginx/start.err"; then
        NGINX_URL=https://127.0.0.1:$NGINX_PORT
        break
    fi
    log "nginx failed to start on port $NGINX_PORT (attempt $attempt):"
    cat "$WORK/nginx/start.err" >&2
done
[[ -n $NGINX_URL ]] || die "nginx did not start"
ready=0
for ((i = 0; i < 100; i++)); do
    if curl -ksf -o /dev/null "$NGINX_URL/b/$BUNDLE/small.bin"; then
        ready=1
        break
    fi
    sleep 0.1
done
((ready)) || { cat "$WORK/nginx/error.log" >&2 || true; die "nginx did not answer at $NGINX_URL within 10 s"; }
log "nginx listening at $NGINX_URL (pid $(cat "$NGINX_PIDFILE"), $SERVER_CORES workers)"

# ---------------------------------------------------------------- sanity: same bytes, same cert
SERVERS=(nginx)
declare -A BASE=([nginx]=$NGINX_URL)
if [[ $SKIP_NODE != 1 ]]; then
    SERVERS+=(cartable)
    BASE[cartable]=$NODE_URL
fi

cert_fp() { # base url -> sha256 fingerprint of the served certificate
    local hostport=${1#https://}
    openssl s_client -connect "$hostport" -servername localhost </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2
}
FILE_FP=$(openssl x509 -in "$CERT" -noout -fingerprint -sha256 | cut -d= -f2)
node_alive() {
    [[ -z $NODE_PID ]] || kill -0 "$NODE_PID" 2>/dev/null
}
node_died() {
    tail -n 20 "$WORK/node.out" "$WORK/node.err" >&2 || true
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=
    die "the node exited"
}
for s in "${SERVERS[@]}"; do
    # The node may print its line before it serves the bundle: wait (bounded) for a 2xx.
    ready=0
    for ((i = 0; i < 100; i++)); do
        if curl -ksf -o /dev/null "${BASE[$s]}/b/$BUNDLE/small.bin"; then
            ready=1
            break
        fi
        [[ $s == cartable ]] && ! node_alive && node_died
        sleep 0.1
    done
    if ((!ready)); then
        curl -ksS -o /dev/null -D - "${BASE[$s]}/b/$BUNDLE/small.bin" >&2 || true
        die "$s does not answer 2xx for ${BASE[$s]}/b/$BUNDLE/small.bin within 10 s"
    fi
    for f in small large; do
        want=$(sha256sum <"$WORK/lesson/$f.bin" | cut -c1-64)
        curl -ksSf -o "$WORK/fetched.bin" "${BASE[$s]}/b/$BUNDLE/$f.bin" || die "$s: GET ${BASE[$s]}/b/$BUNDLE/$f.bin failed"
        got=$(sha256sum <"$WORK/fetched.bin" | cut -c1-64)
        [[ $got == "$want" ]] || die "$s serves wrong bytes for $f.bin ($(stat -c %s "$WORK/fetched.bin") bytes, sha256 $got; want $want)"
    done
    rm -f "$WORK/fetched.bin"
    fp=$(cert_fp "${BASE[$s]}") || true
    if [[ $fp != "$FILE_FP" ]]; then
        log "WARNING: $s presents certificate ${fp:-?}, not $CERT ($FILE_FP)"
    fi
    log "$s: bytes verified; response headers for small.bin:"
    curl -ksS -o /dev/null -D - "${BASE[$s]}/b/$BUNDLE/small.bin" | tr -d '\r' |
        grep -iE '^(HTTP/|content-type|content-length|etag|cache-control|x-content-type-options)' |
        sed 's/^/[load]     /' >&2 || true
done

# ---------------------------------------------------------------- wrk runs
# parse_wrk file -> "rps mbs p99ms sockerr non2xx requests" (mbs in wrk's MB = 2^20 bytes)
parse_wrk() {
    awk '
        function num(s) { sub(/[A-Za-z]+$/, "", s); return s + 0 }
        function unit(s) { if (match(s, /[A-Za-z]+$/)) return substr(s, RSTART); return "" }
        /^Requests\/sec:/ { rps = $2 + 0 }
        /^Transfer\/sec:/ {
            u = unit($2); v = num($2)
            f = (u == "B") ? 1 / 1048576 : (u == "KB") ? 1 / 1024 : (u == "MB") ? 1 : (u == "GB") ? 1024 : (u == "TB") ? 1048576 : -1
            mbs = (f < 0) ? -1 : v * f
        }
        $1 == "99%" {
            u = unit($2); v = num($2)
            f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
            p99 = (f < 0) ? -1 : v * f
        }
        /Socket errors:/ { for (i = 3; i <= NF; i++) { x = $i; gsub(/,/, "", x); if (x ~ /^[0-9]+$/) sock += x } }
        /Non-2xx or 3xx responses:/ { non2xx = $NF + 0 }
        / requests in / { reqs = $1 + 0 }
        END { printf "%.2f %.2f %.3f %d %d %d\n", rps, mbs, p99, sock, non2xx, reqs }
    ' "$1"
}

# parse_h2load file -> the same fields as parse_wrk; the p99 comes from the
# per-request log h2load wrote beside the file (column 3: microseconds)
parse_h2load() {
    local p99
    p99=$(cut -f3 "$1.log" 2>/dev/null | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print -1; else { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f\n", v[i] / 1000 } }')
    awk -v p99="$p99" '
        /^finished in/ {
            for (i = 1; i <= NF; i++) {
                if ($(i + 1) ~ /^req\/s/) rps = $i + 0
                if ($i ~ /B\/s$/) {
                    v = $i; u = v; sub(/[A-Za-z\/]+$/, "", v); sub(/^[0-9.]+/, "", u)
                    f = (u == "B/s") ? 1 / 1048576 : (u == "KB/s") ? 1 / 1024 : (u == "MB/s") ? 1 : (u == "GB/s") ? 1024 : -1
                    mbs = (f < 0) ? -1 : v * f
                }
            }
        }
        /^requests:/ { ok = $8 + 0; sock = $10 + $12 + $14 }
        /^status codes:/ { other = $5 + $7 + $9 }
        END { printf "%.2f %.2f %.3f %d %d %d\n", rps, mbs, p99, sock, other, ok }
    ' "$1"
}

# run_wrk label duration url -> appends the raw output to $WORK/wrk/label.txt
# (h2load's with CLIENT=h2load, and its per-request log beside it)
run_wrk() {
    local out=$WORK/wrk/$1.txt
    if [[ $CLIENT == h2load ]]; then
        if ! "${CLIENT_PIN[@]}" h2load -t"$THREADS" -c"$CONNECTIONS" -m"$STREAMS" -D "$2" --log-file="$out.log" "$3" >"$out" 2>&1; then
            echo "h2load exited with an error" >>"$out"
            return 1
        fi
        return 0
    fi
    if ! "${CLIENT_PIN[@]}" wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"$2" "$3" >"$out" 2>&1; then
        echo "wrk exited with an error" >>"$out"
        return 1
    fi
}

if [[ $WARMUP != 0 && $WARMUP != 0[smh] ]]; then
    log "warm-up: $WARMUP per server and file"
    for s in "${SERVERS[@]}"; do
        for f in small large; do
            run_wrk "warmup-$s-$f" "$WARMUP" "${BASE[$s]}/b/$BUNDLE/$f.bin" || true
        done
    done
fi

RUNS=$WORK/runs.tsv
: >"$RUNS"
RUN_LINES=()
FLAGGED=0
log "measuring: $ROUNDS round(s) x 2 files x ${#SERVERS[@]} server(s), $DURATION each, -t$THREADS -c$CONNECTIONS"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2 == 1)); then order=("${SERVERS[@]}"); else order=(); for ((k = ${#SERVERS[@]} - 1; k >= 0; k--)); do order+=("${SERVERS[$k]}"); done; fi
    for f in small large; do
        for s in "${order[@]}"; do
            label="r$r-$f-$s"
            ok=1
            run_wrk "$label" "$DURATION" "${BASE[$s]}/b/$BUNDLE/$f.bin" || ok=0
            read -r rps mbs p99 sock non2xx reqs < <(parse_"$CLIENT" "$WORK/wrk/$label.txt")
            if [[ $s == cartable ]] && ! node_alive; then
                cat "$WORK/wrk/$label.txt" >&2 || true
                node_died
            fi
            flag=
            if ((!ok || sock > 0 || non2xx > 0 || reqs == 0)); then
                flag=FLAGGED
                FLAGGED=$((FLAGGED + 1))
                log "run $label had errors: wrk_ok=$ok socket_errors=$sock non_2xx_3xx=$non2xx requests=$reqs"
                grep -E 'Socket errors|Non-2xx|error|unable' "$WORK/wrk/$label.txt" | sed 's/^/[load]     /' >&2 || true
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$f" "$s" "$rps" "$mbs" "$p99" "$sock" "$non2xx" "$flag" >>"$RUNS"
            line=$(printf 'round %d  %-5s  %-8s  %10s req/s  %9s MB/s  p99 %9s ms  sock_err %d  non2xx %d%s' \
                "$r" "$f" "$s" "$rps" "$mbs" "$p99" "$sock" "$non2xx" "${flag:+  $flag}")
            RUN_LINES+=("$line")
            log "$line"
        done
    done
done

# ---------------------------------------------------------------- summary
median() { # file server column(4=rps 5=mbs 6=p99)
    awk -F'\t' -v f="$1" -v s="$2" -v c="$3" '$2 == f && $3 == s { print $c }' "$RUNS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) printf "%.2f\n", v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { # numerator denominator
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.3f\n", a / b }'
}

flag_mark() { # file server -> "*" when one of its runs was flagged
    awk -F'\t' -v f="$1" -v s="$2" '$2 == f && $3 == s && $9 != "" { m = "*" } END { print m }' "$RUNS"
}

row() { # label file column higher_is_better(1|0)
    local n c q
    n=$(median "$2" nginx "$3")
    c=$(median "$2" cartable "$3")
    if (($4)); then q=$(ratio "$c" "$n"); else q=$(ratio "$n" "$c"); fi
    printf '%-16s %14s %14s %10s\n' "$1" "$n$(flag_mark "$2" nginx)" "$c$(flag_mark "$2" cartable)" "$q"
}

cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
nginx_version=$(nginx -v 2>&1 | head -n 1)
wrk_version=$({ wrk -v 2>&1 || true; } | head -n 1)
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")

{
    echo "Cartable load harness: cartable-node vs nginx"
    echo "date:        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host:        nproc=$(nproc)  cpu=${cpu_model:-unknown}  kernel=$(uname -r)"
    echo "nginx:       $nginx_version ($SERVER_CORES workers, sendfile, TLS 1.2/1.3)"
    if ((SPLIT)); then
        echo "cores:       servers on ${SERVER_PIN[2]}, load generator on ${CLIENT_PIN[2]} (SPLIT=1)"
    else
        echo "cores:       shared by the servers and the load generator"
    fi
    echo "wrk:         $wrk_version"
    if [[ $SKIP_NODE == 1 ]]; then
        echo "node:        SKIPPED (SKIP_NODE=1 dry run)"
    else
        echo "node:        $CARTABLE_NODE (repo $git_rev)"
    fi
    echo "tls key:     ${KEY_TYPE:-unknown}"
    if [[ $CLIENT == h2load ]]; then
        echo "load:        h2load -t$THREADS -c$CONNECTIONS -m$STREAMS -D $DURATION, HTTP/2 over TLS, loopback, $ROUNDS round(s), warm-up $WARMUP"
    else
        echo "load:        wrk -t$THREADS -c$CONNECTIONS -d$DURATION, HTTP/1.1 over TLS, loopback, $ROUNDS round(s), warm-up $WARMUP"
    fi
    echo
    echo "runs:"
    printf '  %s\n' "${RUN_LINES[@]}"
    echo
    echo "median over $ROUNDS round(s); ratio > 1 means cartable is better"
    echo "(req/s and MB/s: cartable/nginx; p99: nginx_p99/cartable_p99)"
    printf '%-16s %14s %14s %10s\n' metric nginx cartable ratio
    row "16 KiB req/s" small 4 1
    row "16 KiB p99 ms" small 6 0
    row "8 MiB MB/s" large 5 1
    if ((FLAGGED)); then
        echo
        echo "WARNING: $FLAGGED run(s) had socket errors, non-2xx/3xx responses or no requests"
        echo "         (FLAGGED in the runs above; * marks a median that includes one)"
    fi
    echo "(MB = 2^20 bytes, as wrk prints it)"
} >"$WORK/summary.txt"

echo
cat "$WORK/summary.txt"
mkdir -p "$(dirname -- "$RESULTS")"
cp "$WORK/summary.txt" "$RESULTS"
log "written to $RESULTS"
