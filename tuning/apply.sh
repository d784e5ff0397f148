#!/usr/bin/env bash
# Applies tuning/sysctl.conf and tuning/limits.conf to this host. By default it only prints what
# it would do, setting by setting (current value -> new value); --apply makes the changes.
# Each setting's effect and how to verify it are the comments in those two files and
# tuning/README.md; `corecast tune check` audits the result.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
sysctl_source="$here/sysctl.conf"
limits_source="$here/limits.conf"
# 90-: after the distribution's own files in the same directories, so these values win.
sysctl_target="/etc/sysctl.d/90-corecast.conf"
limits_target="/etc/security/limits.d/90-corecast.conf"

usage() {
  cat <<USAGE
Usage: tuning/apply.sh [--apply] [-h|--help]

Applies the kernel settings of tuning/sysctl.conf and the resource limits of tuning/limits.conf.

  (no option)  dry run: print every setting with its current and new value; change nothing
  --apply      as root: install $sysctl_target and load each setting now
               (sysctl -w), and install $limits_target
               (pam_limits reads it at the next login; systemd services use LimitNOFILE= and
               LimitMEMLOCK= in tuning/corecast.service instead)
  -h, --help   print this help

Verify afterwards: corecast tune check (and sysctl KEY for each key in tuning/sysctl.conf).
USAGE
}

apply=0
for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    --apply) apply=1 ;;
    *) echo "apply.sh: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

if [[ $apply -eq 1 && $EUID -ne 0 ]]; then
  echo "apply.sh: --apply changes kernel settings and /etc: run it as root" >&2
  exit 1
fi

# A sysctl's current value from /proc/sys, whitespace collapsed; empty if the kernel lacks it.
current() {
  local path="/proc/sys/${1//.//}"
  [[ -r $path ]] && tr -s '[:space:]' ' ' <"$path" | sed 's/ $//'
  return 0
}

# Whether an installed file already has the source's contents.
describe_install() {
  local source="$1" target="$2"
  if [[ ! -e $target ]]; then
    echo "$target: would be created from ${source#"$here/"}"
  elif cmp -s "$source" "$target"; then
    echo "$target: already installed, identical"
  else
    echo "$target: differs, would be replaced by ${source#"$here/"}"
  fi
}

if [[ $apply -eq 1 ]]; then
  echo "corecast tuning: applying"
else
  echo "corecast tuning: dry run, nothing is changed (add --apply to change the host)"
fi

echo
echo "kernel settings (tuning/sysctl.conf):"
# Each setting follows its comment block in sysctl.conf: the block's first line says what the
# setting does and its `# Verify:` line how to check it; both are printed with the setting.
effect=""
verify=""
while IFS= read -r line; do
  if [[ $line =~ ^#\ Verify:\ (.*) ]]; then
    verify="${BASH_REMATCH[1]}"
    continue
  elif [[ $line =~ ^#\ (.*) ]]; then
    [[ -z $effect ]] && effect="${BASH_REMATCH[1]}"
    continue
  elif [[ ! $line =~ = ]]; then
    effect=""
    verify=""
    continue
  fi
  key="$(echo "${line%%=*}" | xargs)"
  value="$(echo "${line#*=}" | xargs)"
  now="$(current "$key")"
  echo "  # $effect"
  [[ -n $verify ]] && echo "  # verify: $verify"
  effect=""
  verify=""
  if [[ -z $now ]]; then
    echo "  $key: absent on this kernel, skipped"
  elif [[ $now == "$value" ]]; then
    echo "  $key: $now (already set)"
  elif [[ $apply -eq 1 ]]; then
    sysctl -q -w "$key=$value"
    echo "  $key: $now -> $(current "$key")"
  else
    echo "  $key: $now -> $value"
  fi
done <"$sysctl_source"

echo
echo "resource limits (tuning/limits.conf, from the next login; this shell shown as current):"
for item in nofile memlock; do
  soft="$(awk -v item="$item" '$1 == "*" && $2 == "soft" && $3 == item { print $4; exit }' "$limits_source")"
  hard="$(awk -v item="$item" '$1 == "*" && $2 == "hard" && $3 == item { print $4; exit }' "$limits_source")"
  if [[ $item == nofile ]]; then
    echo "  nofile: soft $(ulimit -Sn), hard $(ulimit -Hn) -> soft $soft, hard $hard"
  else
    echo "  memlock (KiB): soft $(ulimit -Sl), hard $(ulimit -Hl) -> soft $soft, hard $hard"
  fi
done

echo
if [[ $apply -eq 1 ]]; then
  install -D -m 0644 "$sysctl_source" "$sysctl_target"
  echo "installed $sysctl_target (loaded at every boot)"
  install -D -m 0644 "$limits_source" "$limits_target"
  echo "installed $limits_target (log in again to get the limits)"
  echo
  echo "verify: corecast tune check"
else
  describe_install "$sysctl_source" "$sysctl_target"
  describe_install "$limits_source" "$limits_target"
fi
