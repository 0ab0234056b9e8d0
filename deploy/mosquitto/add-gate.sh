#!/bin/sh
# Create (or reset) the broker credentials of a gate and of its door controller, and grant each
# of them its own topics in the ACL (a block per user: see the comment at the top of acl).
#
# usage: add-gate.sh [-d DIR] [-p PREFIX] GATE_ID
#   -d DIR     where passwd and acl live (default /etc/mosquitto/maskgate); a missing acl is
#              copied from this folder
#   -p PREFIX  the topic prefix (mqtt.topic_prefix, default maskgate)
#
# Passwords come from $GATE_PASSWORD and $DOOR_PASSWORD when set (for scripts); otherwise they
# are generated and printed once: put them in the gate's and the door's configs
# (MASKGATE_MQTT__PASSWORD). The broker user names are GATE_ID and door.GATE_ID.
# Reload the broker afterwards (systemctl reload mosquitto, or kill -HUP its pid).
set -eu

dir=/etc/mosquitto/maskgate
prefix=maskgate
while getopts d:p: opt; do
    case $opt in
        d) dir=$OPTARG ;;
        p) prefix=$OPTARG ;;
        *) echo "usage: $0 [-d DIR] [-p PREFIX] GATE_ID" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || { echo "usage: $0 [-d DIR] [-p PREFIX] GATE_ID" >&2; exit 2; }
gate=$1

# Gate ids become topic levels and user names: nothing that could reach another gate's topics.
case $gate in
    *[!A-Za-z0-9_-]* | "") echo "$0: gate id must be letters, digits, - or _ (got '$gate')" >&2; exit 2 ;;
esac
[ ${#gate} -le 64 ] || { echo "$0: gate id longer than 64 characters" >&2; exit 2; }
[ "$gate" != maskgate-dashboard ] || { echo "$0: maskgate-dashboard is the dashboard's broker user" >&2; exit 2; }
command -v mosquitto_passwd >/dev/null || { echo "$0: mosquitto_passwd not found (apt install mosquitto)" >&2; exit 1; }

new_password() { head -c 18 /dev/urandom | base64 | tr '+/' '-_'; }
gate_password=${GATE_PASSWORD:-$(new_password)}
door_password=${DOOR_PASSWORD:-$(new_password)}

mkdir -p "$dir"
passwd_file=$dir/passwd
acl_file=$dir/acl
umask 027
[ -f "$acl_file" ] || cp "$(dirname "$0")/acl" "$acl_file"
if [ -f "$passwd_file" ]; then create=""; else create="-c"; fi
# -b puts the password on mosquitto_passwd's command line for a moment; run this on the broker
# host, not on a shared machine.
mosquitto_passwd $create -b "$passwd_file" "$gate" "$gate_password"
mosquitto_passwd -b "$passwd_file" "door.$gate" "$door_password"

if ! grep -qx "user $gate" "$acl_file"; then
    {
        printf '\nuser %s\n' "$gate"
        for topic in availability state door/command events; do
            printf 'topic write %s/%s/%s\n' "$prefix" "$gate" "$topic"
        done
        printf 'topic read %s/%s/door/ack\n' "$prefix" "$gate"
        printf 'topic read %s/models/active\n' "$prefix"
        printf 'topic write homeassistant/sensor/maskgate_%s/+/config\n' "$gate"
        printf 'topic read homeassistant/status\n'
    } >> "$acl_file"
fi
if ! grep -qx "user door.$gate" "$acl_file"; then
    printf '\nuser door.%s\ntopic read %s/%s/door/command\ntopic write %s/%s/door/ack\n' \
        "$gate" "$prefix" "$gate" "$prefix" "$gate" >> "$acl_file"
fi
if getent group mosquitto >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    chgrp mosquitto "$passwd_file" "$acl_file"
fi

echo "gate $gate: broker user '$gate' and door controller user 'door.$gate' in $passwd_file"
[ -n "${GATE_PASSWORD:-}" ] || echo "  gate password: $gate_password"
[ -n "${DOOR_PASSWORD:-}" ] || echo "  door password: $door_password"
echo "  reload the broker to apply: systemctl reload mosquitto"
