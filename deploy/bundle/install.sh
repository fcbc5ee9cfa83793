#!/bin/sh
# Installs the EdgeFleet agent bundle this script sits in, as root:
#   - the system user and group edgefleet-agent (no login shell, no home of its own),
#   - the program in $PREFIX (default /opt/edgefleet-agent), owned by root and read-only to the agent,
#   - /etc/edgefleet/agent.json (root:edgefleet-agent 0640) if there is none,
#   - /etc/edgefleet/trust (root 0755): package-signing roots, where `device enroll` puts them by default,
#   - /var/lib/edgefleet-agent (edgefleet-agent 0750: database, packages, capture),
#   - the systemd unit, enabled but not started (edit the config first, then: systemctl start edgefleet-agent),
#     running the node found on PATH (Node.js >= 20.19, outside /root, /home and /run/user, and runnable by the
#     agent's user: checked).
# Run again over an installed agent, it replaces the program and keeps the config, says which bundle it replaced
# with which (and warns of a rollback to an agent that knows an older agent.db schema); restart the agent afterwards.
# --root DIR installs into DIR as a system image (users in DIR/etc/passwd; no systemctl); for image builds and tests.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    *) echo "usage: install.sh [--root DIR]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it creates a user and writes /opt, /etc and /var/lib)" >&2; exit 1; }
prefix=/opt/edgefleet-agent
user=edgefleet-agent

# The unit runs the node found here (its absolute path is written into the installed unit): a Node.js from
# nodejs.org or `n` lives in /usr/local/bin, NodeSource's in /usr/bin.
node=$(command -v node) || {
  echo "install.sh: node is not installed; expected Node.js >= 20.19 on PATH (the unit runs the node found there)" >&2
  exit 1
}
case "$node" in
  /*) ;;
  *) echo "install.sh: node on PATH is $node, a relative path; expected an absolute one (fix PATH)" >&2; exit 1 ;;
esac
case "$node" in
  *[!A-Za-z0-9/._+-]*) echo "install.sh: node's path $node holds characters a systemd unit would split; expected one without spaces or quotes" >&2; exit 1 ;;
esac
"$node" -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' || {
  echo "install.sh: $node is Node.js $("$node" --version), too old; expected >= 20.19" >&2
  exit 1
}

# The unit runs node as the agent's user with ProtectHome=yes: /root, /home and /run/user are hidden from it, so a
# node from nvm, fnm or volta there would fail every start (203/EXEC). Checked on the path and where it leads.
real_node=$(readlink -f "$node") || real_node=$node
shown_node=$node
[ "$real_node" = "$node" ] || shown_node="$node (a link to $real_node)"
for candidate in "$node" "$real_node"; do
  case "$candidate" in
    /root/*|/home/*|/run/user/*)
      echo "install.sh: node on PATH is $shown_node, under /root, /home or /run/user, which the agent's unit cannot reach (ProtectHome=yes, and it runs as $user, not as you); expected a Node.js >= 20.19 installed system-wide, in /usr/bin or /usr/local/bin (NodeSource, nodejs.org's tarball, n), first on PATH" >&2
      exit 1 ;;
  esac
done

bundle_arch=$(cat "$here/bundle.json" | "$node" -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).arch))')
case "$(uname -m)" in x86_64) machine=x64 ;; aarch64|arm64) machine=arm64 ;; *) machine=$(uname -m) ;; esac
if [ -z "$root" ] && [ "$bundle_arch" != "$machine" ]; then
  echo "install.sh: this bundle is for linux-$bundle_arch, this machine is $machine" >&2; exit 1
fi

if [ -n "$root" ]; then
  mkdir -p "$root/etc"
  for f in passwd group shadow gshadow; do [ -f "$root/etc/$f" ] || { [ -f "/etc/$f" ] && cp -p "/etc/$f" "$root/etc/$f"; } || true; done
  rootopt="--root $root"
else
  rootopt=""
fi
if ! grep -q "^$user:" "$root/etc/passwd" 2>/dev/null; then
  # shellcheck disable=SC2086
  useradd $rootopt --system --user-group --no-create-home --home-dir /var/lib/edgefleet-agent --shell /usr/sbin/nologin "$user"
fi
uid=$(awk -F: -v u="$user" '$1 == u { print $3 }' "$root/etc/passwd")
gid=$(awk -F: -v u="$user" '$1 == u { print $3 }' "$root/etc/group")

# The unit runs node as the agent's user: a folder on the way to it that the user cannot enter (a 0700 one, a
# home folder) would fail every start. Checked with the agent's ids, before the program is installed; through sh,
# as setpriv's own exec still holds root's capabilities (it would reach what the agent cannot).
if command -v setpriv >/dev/null 2>&1; then
  as_agent_error=$(setpriv --reuid="$uid" --regid="$gid" --clear-groups -- /bin/sh -c '"$1" --version' sh "$node" 2>&1 >/dev/null) || {
    echo "install.sh: the agent's user $user (uid $uid) cannot run $node: ${as_agent_error:-it failed}; the unit runs node as that user: expected a Node.js >= 20.19 every user can run, installed system-wide (/usr/bin, /usr/local/bin)" >&2
    exit 1
  }
elif [ -z "$root" ]; then
  as_agent_error=$(su -s /bin/sh "$user" -c '"$1" --version' sh "$node" 2>&1 >/dev/null) || {
    echo "install.sh: the agent's user $user cannot run $node: ${as_agent_error:-it failed}; the unit runs node as that user: expected a Node.js >= 20.19 every user can run, installed system-wide (/usr/bin, /usr/local/bin)" >&2
    exit 1
  }
fi

# The program: root-owned, so the agent cannot change its own code.
rm -rf "$root$prefix.new"
mkdir -p "$root$prefix.new"
cp -a "$here/." "$root$prefix.new/"
chown -R 0:0 "$root$prefix.new"
chmod -R u+rwX,go+rX,go-w "$root$prefix.new"
[ -z "$root" ] && "$root$prefix.new/setup-native.sh"
rm -rf "$root$prefix.old"
# What a bundle says of itself (bundle.json): "version, build B, database schema N"; its schema alone ("" when it
# does not say: a bundle from before bundle.json recorded it). Versions alone cannot tell an upgrade from a
# rollback (every bundle so far is 0.1.0); the agent.db schema its agent knows can.
describe_bundle() {
  "$node" -e 'let j={};try{j=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"))}catch{}
    const s=Number.isInteger(j.agentDatabaseSchema)?j.agentDatabaseSchema:"";
    console.log(process.argv[2]==="schema"?s:`version ${j.version??"unknown"}, build ${j.build??"unknown"}, database schema ${s===""?"unknown":s}`)' "$1" "$2"
}
# An upgrade: a running agent keeps the old program until it is restarted.
upgrade=""
if [ -d "$root$prefix" ]; then
  installed_bundle=$(describe_bundle "$root$prefix/bundle.json" all)
  installed_schema=$(describe_bundle "$root$prefix/bundle.json" schema)
  mv "$root$prefix" "$root$prefix.old"
  upgrade=1
fi
mv "$root$prefix.new" "$root$prefix"
rm -rf "$root$prefix.old"

# Config: readable by the agent's group, writable only by root; the agent's key files go beside it.
install -d -o 0 -g "$gid" -m 0750 "$root/etc/edgefleet"
if [ ! -f "$root/etc/edgefleet/agent.json" ]; then
  install -o 0 -g "$gid" -m 0640 "$here/agent.json" "$root/etc/edgefleet/agent.json"
fi
# Trust anchors: root's, never in a folder the agent owns (it could swap the folder for its own signing root).
install -d -o 0 -g 0 -m 0755 "$root/etc/edgefleet/trust"
# State: the only place the agent writes (the unit's ReadWritePaths).
install -d -o "$uid" -g "$gid" -m 0750 "$root/var/lib/edgefleet-agent"

install -d -m 0755 "$root/etc/systemd/system"
sed "s#/usr/bin/node #$node #g" "$here/edgefleet-agent.service" >"$root/etc/systemd/system/edgefleet-agent.service.new"
chown 0:0 "$root/etc/systemd/system/edgefleet-agent.service.new"
chmod 0644 "$root/etc/systemd/system/edgefleet-agent.service.new"
mv "$root/etc/systemd/system/edgefleet-agent.service.new" "$root/etc/systemd/system/edgefleet-agent.service"
[ -x "$root$node" ] || echo "install.sh: warning: the unit runs $node, which ${root:-/} lacks; install Node.js >= 20.19 there" >&2
if [ -n "$upgrade" ]; then
  new_bundle=$(describe_bundle "$root$prefix/bundle.json" all)
  new_schema=$(describe_bundle "$root$prefix/bundle.json" schema)
  echo "replaced the installed agent ($installed_bundle) with this bundle's ($new_bundle)" >&2
  if [ -n "$installed_schema" ] && [ -n "$new_schema" ] && [ "$new_schema" -lt "$installed_schema" ]; then
    echo "install.sh: warning: this is a rollback: the agent.db the installed agent left (in its data root, /var/lib/edgefleet-agent by default) may have schema $installed_schema, newer than this agent knows ($new_schema); if so, this agent refuses to start (exit 2, \"newer than this agent knows\") until the newer bundle is installed again or agent.db is moved aside, losing its queued captures and deployment state: see deploy/README.md, Rolling a device back" >&2
  fi
fi
if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable edgefleet-agent.service
  if [ -n "$upgrade" ]; then
    echo "upgraded (config /etc/edgefleet/agent.json kept); a running agent runs the old program until: systemctl restart edgefleet-agent" >&2
  else
    echo "installed; edit /etc/edgefleet/agent.json, then: systemctl start edgefleet-agent" >&2
  fi
elif [ -n "$upgrade" ]; then
  echo "upgraded in ${root:-/} (config kept); restart the agent (systemctl restart edgefleet-agent) to run the new program" >&2
else
  echo "installed into ${root:-/}; enable with: systemctl enable --now edgefleet-agent" >&2
fi
