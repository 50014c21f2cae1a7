#!/usr/bin/env bash
# Walk through the syswatch API the way the original README does, checking every answer.
#
#   get the API list, add [1,2,3], add [4,5,6], print the list, clear it, print it again
#
# Each answer is printed as it arrives; the script stops with exit status 1 at the first answer
# that is wrong (and says what was expected), 2 when the API cannot be reached. The walk-through
# needs an empty list, so after getting the API list it prints the list, and when it is not empty
# says so and clears it first (what it held is printed above that line). It clears the list at the
# end too, so it can be run again. Do not run it against a list you want to keep.
#
# Usage:    ./test_api.sh
# Env:      BASE_URL        the API (default http://127.0.0.1:8080)
#           SYSWATCH_TOKEN  bearer token for the POST endpoints, if the API requires one
# Examples: docker-compose up -d && ./test_api.sh
#           BASE_URL=http://127.0.0.1:9080 ./test_api.sh
# Needs curl and python3 only.
set -euo pipefail

BASE_URL="${BASE_URL:-http://127.0.0.1:8080}"
BASE_URL="${BASE_URL%/}"
AUTH=()
[[ -n "${SYSWATCH_TOKEN:-}" ]] && AUTH=(-H "Authorization: Bearer $SYSWATCH_TOKEN")

for cmd in curl python3; do
    command -v "$cmd" >/dev/null || { echo "test_api.sh: error: $cmd is required" >&2; exit 2; }
done

# step TITLE METHOD PATH BODY CHECK
#   CHECK is a Python expression over `r` (the JSON answer); it must be true with status 200.
#   The answer is left in ANSWER.
ANSWER=""
CHECKED=0
step() {
    local title=$1 method=$2 path=$3 body=$4 check=$5 out status
    echo "$title"
    local args=(-sS -X "$method" -w '\n%{http_code}' --max-time 10)
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' -d "$body" "${AUTH[@]}")
    if ! out="$(curl "${args[@]}" "$BASE_URL$path")"; then
        echo "test_api.sh: error: cannot reach $BASE_URL$path (is the API running? docker-compose up -d)" >&2
        exit 2
    fi
    status="${out##*$'\n'}"
    body="${out%$'\n'*}"
    ANSWER=$body
    echo "$body"
    echo
    CHECK="$check" STATUS="$status" python3 -c '
import json, os, sys
status, check = os.environ["STATUS"], os.environ["CHECK"]
try:
    r = json.loads(sys.stdin.read())
except ValueError as exc:
    sys.exit(f"FAIL: the answer is not JSON ({exc})")
if status != "200":
    sys.exit(f"FAIL: HTTP status {status}, expected 200")
try:
    ok = eval(check, {"r": r})
except (KeyError, IndexError, TypeError) as exc:
    sys.exit(f"FAIL: the answer lacks {exc!r}; expected {check}")
if not ok:
    sys.exit(f"FAIL: expected {check}")
' <<<"$body" || { echo "test_api.sh: $method $path gave a wrong answer (above)" >&2; exit 1; }
    CHECKED=$((CHECKED + 1))
}

step "Getting available APIs" GET /apis "" \
    'all(any(p in str(e) for e in r["available_apis"]) for p in ("/add_ips", "/print_all_ips", "/clear_ip_list")) and isinstance(r["usage"], dict)'
step "Checking that the IP list is empty (print_all_ips)" POST /print_all_ips '{"print_all_ips": true}' \
    'r["message"] == "All IPs retrieved successfully" and isinstance(r["ips"], list) and r["total_ips"] == len(r["ips"])'
held="$(python3 -c 'import json, sys; print(json.loads(sys.stdin.read())["total_ips"])' <<<"$ANSWER")"
if [[ $held != 0 ]]; then
    echo "test_api.sh: the list held $held addresses (printed above); clearing it first, so that the walk-through starts from an empty list"
    echo
    step "Clearing IP list first" POST /clear_ip_list '{"clear_ip_list": true}' \
        'r["message"] == "IP list cleared successfully" and r["total_ips"] == 0'
fi
step "Adding IPs [1,2,3]" POST /add_ips '{"add_ips": [1, 2, 3]}' \
    'r["message"] == "IPs added successfully" and r["added_ips"] == [1, 2, 3] and r["total_ips"] == 3'
step "Adding IPs [4,5,6]" POST /add_ips '{"add_ips": [4, 5, 6]}' \
    'r["message"] == "IPs added successfully" and r["added_ips"] == [4, 5, 6] and r["total_ips"] == 6'
step "Printing all IPs" POST /print_all_ips '{"print_all_ips": true}' \
    'r["message"] == "All IPs retrieved successfully" and r["ips"] == [1, 2, 3, 4, 5, 6] and r["total_ips"] == 6'
step "Clearing IP list" POST /clear_ip_list '{"clear_ip_list": true}' \
    'r["message"] == "IP list cleared successfully" and r["total_ips"] == 0'
step "Printing all IPs after clearing" POST /print_all_ips '{"print_all_ips": true}' \
    'r["message"] == "All IPs retrieved successfully" and r["ips"] == [] and r["total_ips"] == 0'
echo "test_api.sh: all $CHECKED answers are correct ($BASE_URL)"
