#!/usr/bin/env bash
# make docker-test: build the Dockerfile's two targets (kpush and feed) with
# buildah and run them with podman the way the Kubernetes manifest runs kpush
# (read-only root, uid/gid 65532, no capabilities, no privilege escalation),
# then check health, readiness, one record end to end, the drain on stop
# (exit 0, clients closed with 1001), and that the image holds no shell and
# nothing but the binary, its config and the base image.
#
# No Docker engine is needed: buildah builds (--isolation chroot, as this
# kind of machine refuses crun's cgroup setup), podman runs with runc and
# cgroupfs. When the two base images cannot be pulled, stand-ins are built
# under the same names:
#   golang:1.26-bookworm                    a debootstrap --variant=minbase bookworm
#                                           root (cached in $KPUSH_CI_CACHE) plus
#                                           the local Go toolchain and the host's
#                                           CA bundle (for `go mod download`)
#   gcr.io/distroless/static-debian12:nonroot  CA certificates, tzdata, and a passwd
#                                           with nonroot as uid 65532
# Stand-ins carry the label io.kpush.ci.stand-in and are rebuilt when the
# local Go toolchain changes; a pulled (real) image is used as it is.
#
# Needs root, buildah, podman, runc, debootstrap, go, curl (.ci/run installs
# them). Containers use the host network on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${KPUSH_CI_CACHE:-/var/cache/kpush-ci}
MIRROR=${KPUSH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TAG=docker-test
KPUSH_IMAGE=localhost/kpush:$TAG
FEED_IMAGE=localhost/kpush-feed:$TAG
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file)
NAMES=(kpush-dt-broker kpush-dt kpush-dt-feed)

started=$SECONDS
step() { printf '== docker-test [%3ds] %s\n' "$((SECONDS - started))" "$*"; }
fail() {
	echo "docker-test: FAIL: $*" >&2
	for n in "${NAMES[@]}"; do
		if "${PODMAN[@]}" container exists "$n" 2>/dev/null; then
			echo "--- log of $n (last 30 lines)" >&2
			"${PODMAN[@]}" logs "$n" 2>&1 | tail -30 >&2 || true
		fi
	done
	exit 1
}

for tool in buildah podman runc debootstrap go curl; do
	command -v "$tool" >/dev/null || fail "$tool is not installed (.ci/run installs it)"
done
[ "$(id -u)" = 0 ] || fail "needs root (buildah --isolation chroot and podman run as root here)"

work=$(mktemp -d /tmp/kpush-docker-test.XXXXXX)
mounted=()
cleanup() {
	for n in "${NAMES[@]}"; do "${PODMAN[@]}" rm -f -t 0 "$n" >/dev/null 2>&1 || true; done
	for img in "${mounted[@]}"; do "${PODMAN[@]}" image unmount "$img" >/dev/null 2>&1 || true; done
	rm -rf "$work"
}
trap cleanup EXIT

# ---- the base images the Dockerfile names -----------------------------------
go_version=$(sed -n 's/^ARG GO_VERSION=//p' Dockerfile)
[ -n "$go_version" ] || fail "Dockerfile has no ARG GO_VERSION"
grep -q '^FROM golang:${GO_VERSION}-bookworm AS source' Dockerfile || fail "Dockerfile's builder is no longer golang:\${GO_VERSION}-bookworm; update this script"
GO_IMAGE=docker.io/library/golang:${go_version}-bookworm
RUNTIME_IMAGE=$(sed -n 's/^FROM \(gcr.io\/distroless\/[^ ]*\) AS kpush$/\1/p' Dockerfile)
[ -n "$RUNTIME_IMAGE" ] || fail "Dockerfile's kpush stage is no longer FROM gcr.io/distroless/...; update this script"

local_go=$(go env GOVERSION)
stand_in_id="$local_go/$(sha256sum "$0" | cut -c1-12)"

# usable IMAGE: present, and either real (no stand-in label) or a stand-in of
# this toolchain and this script.
usable() {
	local label
	label=$("${PODMAN[@]}" image inspect --format '{{index .Labels "io.kpush.ci.stand-in"}}' "$1" 2>/dev/null) || return 1
	[ -z "$label" ] || [ "$label" = "$stand_in_id" ]
}

# The debootstrap root both stand-ins come from, built once per cache.
minbase() {
	local tar=$CACHE/bookworm-minbase.tar
	if [ ! -s "$tar" ]; then
		step "debootstrap --variant=minbase bookworm into $CACHE (first run only)" >&2
		mkdir -p "$CACHE"
		rm -rf "$CACHE/rootfs.tmp"
		debootstrap --variant=minbase --include=ca-certificates,tzdata bookworm "$CACHE/rootfs.tmp" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
			{ tail -20 "$work/debootstrap.log" >&2; fail "debootstrap from $MIRROR failed"; }
		# The apt lists and .deb files are not part of a base image.
		rm -rf "$CACHE/rootfs.tmp/var/cache/apt/archives/"*.deb "$CACHE/rootfs.tmp/var/lib/apt/lists/"*
		tar -C "$CACHE/rootfs.tmp" --numeric-owner -cf "$tar.tmp" .
		mv "$tar.tmp" "$tar"
		rm -rf "$CACHE/rootfs.tmp"
	fi
	echo "$tar"
}

build_go_stand_in() {
	local ctx=$work/golang root
	root=$(minbase)
	mkdir -p "$ctx"
	ln "$root" "$ctx/rootfs.tar" 2>/dev/null || cp "$root" "$ctx/rootfs.tar"
	tar -C "$(go env GOROOT)" --transform 's,^\.,go,' -cf "$ctx/go.tar" .
	# The host's CA bundle, so that `go mod download` in the build trusts
	# what the host trusts (a TLS-intercepting egress proxy, for one).
	cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
	cat >"$ctx/Containerfile" <<-EOF
		FROM scratch
		ADD rootfs.tar /
		ADD go.tar /usr/local/
		COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
		ENV GOLANG_VERSION=${local_go#go} GOTOOLCHAIN=local GOPATH=/go \\
		    PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		RUN mkdir -p /go/bin /go/src && chmod -R 1777 /go
		WORKDIR /go
		LABEL io.kpush.ci.stand-in="$stand_in_id"
		CMD ["bash"]
	EOF
	buildah bud --isolation chroot --quiet --pull=never -t "$GO_IMAGE" "$ctx" >/dev/null
	rm -rf "$ctx"
}

build_distroless_stand_in() {
	local ctx=$work/distroless root
	root=$(minbase)
	mkdir -p "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/home/nonroot" "$ctx/rootfs/root" "$ctx/rootfs/tmp"
	tar -C "$ctx/rootfs" -xf "$root" ./usr/share/zoneinfo
	tar -C "$work" -xf "$root" ./etc/ssl/certs/ca-certificates.crt
	mv "$work/etc/ssl/certs/ca-certificates.crt" "$ctx/rootfs/etc/ssl/certs/"
	rm -rf "$work/etc"
	printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
		'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$ctx/rootfs/etc/passwd"
	printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$ctx/rootfs/etc/group"
	echo 'hosts: files dns' >"$ctx/rootfs/etc/nsswitch.conf"
	printf '%s\n' 'PRETTY_NAME="Distroless (kpush CI stand-in)"' 'ID=debian' 'VERSION_ID="12"' >"$ctx/rootfs/etc/os-release"
	chown 65532:65532 "$ctx/rootfs/home/nonroot"
	chmod 700 "$ctx/rootfs/root"
	chmod 1777 "$ctx/rootfs/tmp"
	tar -C "$ctx/rootfs" --numeric-owner -cf "$ctx/rootfs.tar" .
	cat >"$ctx/Containerfile" <<-EOF
		FROM scratch
		ADD rootfs.tar /
		ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
		USER 65532
		WORKDIR /home/nonroot
		LABEL io.kpush.ci.stand-in="$stand_in_id"
	EOF
	buildah bud --isolation chroot --quiet --pull=never -t "$RUNTIME_IMAGE" "$ctx" >/dev/null
	rm -rf "$ctx"
}

base_image() { # name builder
	if usable "$1"; then
		step "base $1: present"
		return
	fi
	# A stand-in of another toolchain or script version goes first, so that
	# the pull below cannot mistake it for the real image.
	buildah rmi -f "$1" >/dev/null 2>&1 || true
	if timeout 120 buildah pull --quiet "$1" >/dev/null 2>"$work/pull.log"; then
		step "base $1: pulled"
		return
	fi
	step "base $1: pull failed ($(tail -1 "$work/pull.log" | cut -c1-100)); building the stand-in"
	# Layers cached on a previous base are of no use any more.
	buildah rmi --prune >/dev/null 2>&1 || true
	"$2"
	usable "$1" || fail "stand-in $1 was not built"
}

base_image "$GO_IMAGE" build_go_stand_in
base_image "$RUNTIME_IMAGE" build_distroless_stand_in

# ---- build both targets -----------------------------------------------------
# --format docker keeps HEALTHCHECK (the OCI format has no field for it).
bud() { # target image
	buildah bud --isolation chroot --format docker --layers --pull=never \
		--build-arg VERSION=$TAG --target "$1" -t "$2" -f Dockerfile . >"$work/bud-$1.log" 2>&1 ||
		{ tail -30 "$work/bud-$1.log" >&2; fail "buildah bud --target $1 failed"; }
}
step "buildah bud --target kpush"
bud kpush "$KPUSH_IMAGE"
step "buildah bud --target feed"
bud feed "$FEED_IMAGE"
step "images built"

# ---- what the images hold ---------------------------------------------------
# Every path of an image, relative to its root.
listing() {
	local mnt
	mnt=$("${PODMAN[@]}" image mount "$1") || fail "podman image mount $1"
	mounted+=("$1")
	(cd "$mnt" && find . -mindepth 1 | sort)
}
# check_content IMAGE ALLOWED...: the image is the runtime base plus exactly
# the allowed files (and the directories holding them), with no shell.
check_content() {
	local img=$1
	shift
	listing "$RUNTIME_IMAGE" >"$work/base.list"
	listing "$img" >"$work/img.list"
	comm -13 "$work/base.list" "$work/img.list" >"$work/extra.list"
	local allowed=() f d
	for f in "$@"; do
		allowed+=(".$f")
		d=$(dirname "$f")
		while [ "$d" != / ]; do
			allowed+=(".$d")
			d=$(dirname "$d")
		done
	done
	printf '%s\n' "${allowed[@]}" | sort -u >"$work/allowed.list"
	if [ -n "$(comm -23 "$work/extra.list" "$work/allowed.list")" ]; then
		fail "$img holds files beyond its base and ${*}: $(comm -23 "$work/extra.list" "$work/allowed.list" | head -20 | tr '\n' ' ')"
	fi
	for f in "$@"; do
		grep -qx ".$f" "$work/extra.list" || fail "$img lacks $f"
	done
	if [ -n "$(comm -23 "$work/base.list" "$work/img.list")" ]; then
		fail "$img lacks files of its base $RUNTIME_IMAGE"
	fi
	local mnt shells exes
	mnt=$("${PODMAN[@]}" image mount "$img")
	shells=$(cd "$mnt" && find . \( -name sh -o -name bash -o -name dash -o -name ash -o -name zsh -o -name busybox \) -print)
	[ -z "$shells" ] || fail "$img holds a shell: $shells"
	exes=$(cd "$mnt" && find . -type f -perm /111 -print)
	[ "$exes" = ".$1" ] || fail "$img: executables are [$exes], want only $1"
	echo "$img: the $(wc -l <"$work/base.list") paths of $RUNTIME_IMAGE plus $(tr '\n' ' ' <"$work/extra.list"); no shell"
}
step "image contents"
check_content "$KPUSH_IMAGE" /usr/local/bin/kpush /etc/kpush/kpush.yaml
check_content "$FEED_IMAGE" /usr/local/bin/kpush-feed
user=$(buildah inspect --type image --format '{{.Docker.Config.User}}' "$KPUSH_IMAGE")
[ "$user" = nonroot:nonroot ] || fail "image user is $user, want nonroot:nonroot"
health=$(buildah inspect --type image --format '{{.Docker.Config.Healthcheck.Test}}' "$KPUSH_IMAGE")
[ "$health" = "[CMD /usr/local/bin/kpush healthcheck]" ] || fail "image healthcheck is $health"

# ---- run it as the Kubernetes manifest does ---------------------------------
manifest=deployments/kubernetes/base/deployment.yaml
yaml_value() { sed -n "s/^ *$1: *\"\{0,1\}\([^\"#]*\)\"\{0,1\} *$/\1/p" "$manifest" | awk 'NR == 1'; }
uid=$(yaml_value runAsUser)
gid=$(yaml_value runAsGroup)
[ "$uid" = 65532 ] && [ "$gid" = 65532 ] || fail "$manifest runs as $uid:$gid; the image's nonroot user is 65532:65532"
[ "$(yaml_value runAsNonRoot)" = true ] || fail "$manifest: runAsNonRoot is not true"
[ "$(yaml_value readOnlyRootFilesystem)" = true ] || fail "$manifest: readOnlyRootFilesystem is not true; update this script"
[ "$(yaml_value allowPrivilegeEscalation)" = false ] || fail "$manifest: allowPrivilegeEscalation is not false; update this script"
grep -q 'drop: \["ALL"\]' "$manifest" || fail "$manifest no longer drops ALL capabilities; update this script"
grep -q 'type: RuntimeDefault' "$manifest" || fail "$manifest no longer uses the RuntimeDefault seccomp profile; update this script"
# runAsUser/Group, readOnlyRootFilesystem (and no tmpfs the pod would not
# have), allowPrivilegeEscalation: false, capabilities drop ALL; podman's
# default seccomp profile stands for RuntimeDefault. The config directory is
# mounted read-only over the image's, as the ConfigMap is.
RUN=(run --network host --read-only --read-only-tmpfs=false --user "$uid:$gid"
	--cap-drop ALL --security-opt no-new-privileges
	--ulimit nofile=10000:10000 --ulimit nproc=4096:4096 --health-interval disable)
# podman asks systemd (not running here) for a health-check timer on every
# start and stop and logs that it could not; the check itself is run below.
quiet() { "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

# free_port: a loopback port nothing listens on, below the ephemeral range
# (where an outgoing connection's local port would make the bind fail).
taken=" "
low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
	local p
	while :; do
		p=$((10000 + RANDOM % (low - 10000)))
		case $taken in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			taken="$taken$p "
			echo "$p"
			return
		fi
	done
}
kafka_port=$(free_port)
broker_ws=$(free_port)
broker_admin=$(free_port)
ws_port=$(free_port)
# The image's HEALTHCHECK probes 127.0.0.1:9090 (the default admin_listen):
# use that port when it is free, so `podman healthcheck run` runs the
# image's own check.
if (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null; then
	admin_port=$(free_port)
else
	admin_port=9090
fi

step "the image's own config validates"
quiet "${PODMAN[@]}" "${RUN[@]}" --rm "$KPUSH_IMAGE" validate -config /etc/kpush/kpush.yaml >/dev/null ||
	fail "kpush validate of the image's /etc/kpush/kpush.yaml"
step "no shell to run"
if quiet "${PODMAN[@]}" "${RUN[@]}" --rm --entrypoint /bin/sh "$KPUSH_IMAGE" -c true >/dev/null 2>&1; then
	fail "/bin/sh ran in the image"
fi

# The broker: the same image in -dev mode (an embedded Kafka-protocol broker,
# topic ticks). It stands for the cluster's Kafka.
mkdir -p "$work/broker" "$work/kpush"
sed -e "s/^listen: .*/listen: \"127.0.0.1:$broker_ws\"/" \
	-e "s/^admin_listen: .*/admin_listen: \"127.0.0.1:$broker_admin\"/" \
	configs/dev.yaml >"$work/broker/kpush.yaml"
# kpush itself: the Kubernetes config, on loopback ports, pointed at that
# broker, with a short drain so the stop check is quick.
sed -e "s/^listen: .*/listen: \"127.0.0.1:$ws_port\"/" \
	-e "s/^admin_listen: .*/admin_listen: \"127.0.0.1:$admin_port\"/" \
	-e "s/^  brokers: .*/  brokers: [\"127.0.0.1:$kafka_port\"]/" \
	-e "s/^  drain_timeout: .*/  drain_timeout: 3s/" \
	deployments/kubernetes/base/kpush.yaml >"$work/kpush/kpush.yaml"
grep -q "127.0.0.1:$kafka_port" "$work/kpush/kpush.yaml" || fail "could not point the config at the broker"
chmod -R a+rX "$work"

wait_http() { # url what container
	local i
	for i in $(seq 1 300); do
		curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
		[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$3" 2>/dev/null)" = true ] || fail "container $3 stopped"
		sleep 0.2
	done
	fail "$2 ($1) did not answer 200 within 60s"
}

step "run the broker (kpush -dev)"
quiet "${PODMAN[@]}" "${RUN[@]}" -d --name kpush-dt-broker -v "$work/broker:/etc/kpush:ro" "$KPUSH_IMAGE" \
	-config /etc/kpush/kpush.yaml -dev -dev-kafka "127.0.0.1:$kafka_port" -dev-rate 2 -dev-partitions 2 >/dev/null
wait_http "http://127.0.0.1:$broker_admin/readyz" "the broker container's /readyz" kpush-dt-broker

step "run kpush (read-only, uid $uid, no capabilities)"
quiet "${PODMAN[@]}" "${RUN[@]}" -d --name kpush-dt -v "$work/kpush:/etc/kpush:ro" "$KPUSH_IMAGE" >/dev/null
wait_http "http://127.0.0.1:$admin_port/healthz" "kpush /healthz" kpush-dt
pid=$("${PODMAN[@]}" inspect --format '{{.State.Pid}}' kpush-dt)
grep -q "^Uid:[[:space:]]*$uid[[:space:]]" "/proc/$pid/status" || fail "kpush does not run as uid $uid: $(grep Uid "/proc/$pid/status")"
grep -q "^CapEff:[[:space:]]*0*$" "/proc/$pid/status" || fail "kpush has capabilities: $(grep CapEff "/proc/$pid/status")"
grep -q "^NoNewPrivs:[[:space:]]*1" "/proc/$pid/status" || fail "kpush may gain privileges"
awk '$5 == "/" { split($6, o, ","); if (o[1] != "ro") exit 1 }' "/proc/$pid/mountinfo" || fail "kpush's root filesystem is writable"
[ "$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits")" = 10000 ] || fail "nofile limit is not 10000"

if [ "$admin_port" = 9090 ]; then
	step "health: podman healthcheck run (the image's HEALTHCHECK)"
	quiet "${PODMAN[@]}" healthcheck run kpush-dt || fail "the image's HEALTHCHECK did not pass"
else
	step "health: the image's HEALTHCHECK command, with -url (port 9090 is taken on this host)"
	"${PODMAN[@]}" exec kpush-dt /usr/local/bin/kpush healthcheck -url "http://127.0.0.1:$admin_port/healthz" ||
		fail "kpush healthcheck (the image's HEALTHCHECK) did not answer 0"
fi
step "readiness"
wait_http "http://127.0.0.1:$admin_port/readyz" "kpush /readyz" kpush-dt

step "end to end: kpush-feed image -> broker -> kpush -> WebSocket client"
go build -o "$work/probe" ./deployments/container/probe
quiet "${PODMAN[@]}" "${RUN[@]}" -d --name kpush-dt-feed "$FEED_IMAGE" \
	-brokers "127.0.0.1:$kafka_port" -topic ticks -symbols ZZTEST -rate 20 >/dev/null
"$work/probe" -url "ws://127.0.0.1:$ws_port/ws" -channel ticks.ZZTEST -timeout 90s -wait-close 1001 -close-timeout 60s \
	>"$work/probe.out" 2>&1 &
probe_pid=$!
for i in $(seq 1 450); do
	grep -q '^record ' "$work/probe.out" && break
	kill -0 "$probe_pid" 2>/dev/null || break
	sleep 0.2
done
grep '^record ' "$work/probe.out" || { cat "$work/probe.out" >&2; fail "no record from the kpush-feed container reached the client"; }

step "stop: drain, clients closed with 1001, exit 0"
quiet "${PODMAN[@]}" stop -t 30 kpush-dt >/dev/null
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' kpush-dt)
wait "$probe_pid" || { cat "$work/probe.out" >&2; fail "the client was not closed with 1001 by the drain"; }
grep '^closed ' "$work/probe.out"
[ "$code" = 0 ] || fail "kpush exited $code after podman stop, want 0"
# Into a file first: under pipefail, `podman logs | grep -q` fails whenever
# grep exits on its first match before podman has written everything (SIGPIPE).
"${PODMAN[@]}" logs kpush-dt >"$work/kpush.log" 2>&1 || fail "podman logs kpush-dt"
grep -q 'drain' "$work/kpush.log" || fail "kpush's log shows no drain"

step "passed"
