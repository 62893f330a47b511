#!/usr/bin/env bash
# Fetch the six published RepDistiller CIFAR-100 teachers into
# {save_dir}/models/{name}_vanilla/ckpt_epoch_240.pth, where train_student.py looks for them.
#
#   scripts/fetch_pretrained_teachers.sh [--only NAME]... [--sha256 FILE] [--save_dir DIR] [--dry-run]
#
# Mirrors (base URLs; a file is {base}/{name}_vanilla/ckpt_epoch_240.pth), tried in order:
#   http://shape2prog.csail.mit.edu/repo, then $TEACHER_MIRROR when set.
#   $TEACHER_MIRRORS (space-separated) replaces the whole list.
# Downloads go to a .part file kept between attempts and resumed (curl -C -); a dead mirror
# fails fast (connect timeout $TEACHER_CONNECT_TIMEOUT, default 15 s). Every file is checked
# (sha256 when --sha256 lists it, then scripts/verify_teacher.py: weights_only load + strict
# load into the architecture) before it is moved into place; a file that fails is deleted.
# A teacher already present and verified is not downloaded again.
# Python: $PYTHON, else .venv/bin/python, else python3. Exit 0 when every teacher is good,
# 1 when any failed, 2 on a usage error.

# `sh scripts/fetch_pretrained_teachers.sh` (as the published instructions say) runs dash on Debian: re-run under bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEACHERS=(wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50)
ORIGINAL_MIRROR="http://shape2prog.csail.mit.edu/repo"
CONNECT_TIMEOUT="${TEACHER_CONNECT_TIMEOUT:-15}"

die() {
    echo "error: $*" >&2
    exit 2
}

usage() {
    cat <<EOF
usage: scripts/fetch_pretrained_teachers.sh [--only NAME]... [--sha256 FILE] [--save_dir DIR] [--dry-run]

Download and verify the published RepDistiller CIFAR-100 teachers into
DIR/models/NAME_vanilla/ckpt_epoch_240.pth (DIR defaults to save).

  --only NAME     fetch only this teacher (repeatable, or comma-separated); one of: ${TEACHERS[*]}
  --sha256 FILE   sha256sum-format list; a file whose hash differs (or is not listed) is rejected
  --save_dir DIR  root folder of the checkpoints (default: save)
  --dry-run       print the URLs that would be tried and exit

Environment: TEACHER_MIRROR (extra base URL tried after the original), TEACHER_MIRRORS
(space-separated base URLs replacing the whole list), TEACHER_CONNECT_TIMEOUT (seconds, default 15),
PYTHON (interpreter used for verification).
EOF
}

only=()
only_given=0
sha_file=""
save_dir="save"
dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --only)
            [ $# -ge 2 ] || die "--only needs a teacher name, one of: ${TEACHERS[*]}"
            only_given=1
            IFS=',' read -r -a names <<<"$2"
            only+=(${names[@]+"${names[@]}"})
            shift 2
            ;;
        --only=*)
            only_given=1
            IFS=',' read -r -a names <<<"${1#*=}"
            only+=(${names[@]+"${names[@]}"})
            shift
            ;;
        --sha256)
            [ $# -ge 2 ] || die "--sha256 needs a file in sha256sum format"
            sha_file="$2"
            shift 2
            ;;
        --sha256=*) sha_file="${1#*=}"; shift ;;
        --save_dir)
            [ $# -ge 2 ] || die "--save_dir needs a folder"
            save_dir="$2"
            shift 2
            ;;
        --save_dir=*) save_dir="${1#*=}"; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1'; run scripts/fetch_pretrained_teachers.sh --help to see the options" ;;
    esac
done

selected=("${TEACHERS[@]}")
if [ $only_given -eq 1 ] && [ ${#only[@]} -eq 0 ]; then
    die "--only was given no name; pass one of: ${TEACHERS[*]}"
fi
if [ ${#only[@]} -gt 0 ]; then
    selected=()
    for name in "${only[@]}"; do
        known=0
        for teacher in "${TEACHERS[@]}"; do
            [ "$name" = "$teacher" ] && known=1
        done
        [ $known -eq 1 ] || die "'$name' is not a published teacher; pass --only with one of: ${TEACHERS[*]}"
        selected+=("$name")
    done
fi
if [ -n "$sha_file" ] && [ ! -f "$sha_file" ]; then
    die "the --sha256 file '$sha_file' does not exist; pass a list written by sha256sum"
fi

if [ -n "${TEACHER_MIRRORS+x}" ]; then
    read -r -a mirrors <<<"$TEACHER_MIRRORS"
    [ ${#mirrors[@]} -gt 0 ] || die "TEACHER_MIRRORS is set but empty; unset it or list at least one base URL"
else
    mirrors=("$ORIGINAL_MIRROR")
    if [ -n "${TEACHER_MIRROR:-}" ]; then
        mirrors+=("$TEACHER_MIRROR")
    fi
fi

file_url() { # base name
    echo "${1%/}/${2}_vanilla/ckpt_epoch_240.pth"
}

destination() { # name
    echo "$save_dir/models/${1}_vanilla/ckpt_epoch_240.pth"
}

if [ $dry_run -eq 1 ]; then
    for name in "${selected[@]}"; do
        for base in "${mirrors[@]}"; do
            echo "$name $(file_url "$base" "$name") -> $(destination "$name")"
        done
    done
    exit 0
fi

command -v curl >/dev/null 2>&1 || die "curl is not installed; install it (e.g. apt-get install curl) and run again"
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="python3"
fi

expected_sha256() { # name -> the listed hash, or nothing
    awk -v want="${1}_vanilla/ckpt_epoch_240.pth" -v bare="$1" '
        NF >= 2 {
            f = $2; sub(/^\*/, "", f); n = length(want); m = length(f)
            if (f == bare || f == bare ".pth" ||
                (m >= n && substr(f, m - n + 1) == want && (m == n || substr(f, m - n, 1) == "/"))) {
                print tolower($1); exit
            }
        }' "$sha_file"
}

file_sha256() { # file -> hex digest (sha256sum on Linux, shasum on macOS)
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

check() { # name file -> 0 when the file is good; prints why not
    local name="$1" file="$2" want have out
    if [ -n "$sha_file" ]; then
        want="$(expected_sha256 "$name")"
        if [ -z "$want" ]; then
            echo "$name: $sha_file lists no sha256 for ${name}_vanilla/ckpt_epoch_240.pth; add it or drop --sha256" >&2
            return 1
        fi
        have="$(file_sha256 "$file")"
        if [ "$have" != "$want" ]; then
            echo "$name: sha256 of $file is $have, but $sha_file lists $want" >&2
            return 1
        fi
    fi
    if ! out="$("$PY" "$ROOT/scripts/verify_teacher.py" "$name" "$file" 2>&1)"; then
        out="${out##*$'\n'}"
        echo "$name: verification failed: ${out#error: }" >&2
        return 1
    fi
    echo "$name: ${out##*$'\n'}"
    return 0
}

http_code=""
curl_get() { # url file: download or resume into file; sets http_code
    local progress=(--silent --show-error) rc
    [ -t 2 ] && progress=(--progress-bar)
    http_code="$(curl --fail --location --proto '=http,https' --proto-redir '=http,https' "${progress[@]}" \
        --connect-timeout "$CONNECT_TIMEOUT" --speed-limit 1024 --speed-time 60 \
        --continue-at - --output "$2" --write-out '%{http_code}' "$1")"
    rc=$?
    return $rc
}

created=() # folders this run made, innermost last: a failed fetch removes those it left empty
make_folder() { # folder -> 0 when it exists; records the levels it had to create
    local folder="$1" missing=()
    while [ ! -e "$folder" ]; do
        missing=("$folder" ${missing[@]+"${missing[@]}"})
        folder="$(dirname "$folder")"
    done
    mkdir -p "$1" || return 1
    created+=(${missing[@]+"${missing[@]}"})
}

remove_empty_created() { # rmdir, innermost first, the folders this run created and left empty
    local i
    for ((i = ${#created[@]} - 1; i >= 0; i--)); do
        rmdir "${created[$i]}" 2>/dev/null || true
    done
}

fetch() { # name -> 0 when a verified file is in place
    local name="$1" dest part base url rc resumed attempt
    dest="$(destination "$name")"
    part="$dest.part"
    make_folder "$(dirname "$dest")" || { echo "$name: cannot create $(dirname "$dest")" >&2; return 1; }
    if [ -f "$dest" ]; then
        if check "$name" "$dest"; then
            echo "$name: already present and verified, not downloaded again: $dest"
            return 0
        fi
        rm -f "$dest"
        echo "$name: deleted $dest, which failed the check above; downloading it again" >&2
    fi
    for base in "${mirrors[@]}"; do
        url="$(file_url "$base" "$name")"
        for attempt in 1 2; do
            resumed=0
            if [ -s "$part" ]; then
                resumed=1
                echo "$name: resuming $part ($(wc -c <"$part" | tr -d ' ') bytes) from $url"
            else
                echo "$name: downloading $url"
            fi
            curl_get "$url" "$part"
            rc=$?
            if [ $rc -ne 0 ] && [ "$http_code" = "416" ] && [ $resumed -eq 1 ]; then
                # nothing left to fetch: the .part is complete (stopped before its check) or longer than the file
                echo "$name: the server has nothing past the $(wc -c <"$part" | tr -d ' ') bytes of $part (so the HTTP 416 above); checking it as it is"
                rc=0
            elif [ $rc -eq 33 ] && [ $resumed -eq 1 ]; then
                echo "$name: $base cannot resume downloads; starting over" >&2
                rm -f "$part"
                continue
            fi
            if [ $rc -ne 0 ]; then
                [ -s "$part" ] || rm -f "$part"
                echo "$name: $url failed (curl exit code $rc); trying the next mirror" >&2
                break
            fi
            if check "$name" "$part"; then
                if mv -f "$part" "$dest"; then
                    echo "$name: saved $dest"
                    return 0
                fi
                echo "$name: cannot move $part to $dest" >&2
                return 1
            fi
            rm -f "$part"
            echo "$name: deleted the file downloaded from $url, which failed the check above" >&2
            [ $resumed -eq 1 ] || break # a resumed file may mix two downloads: fetch it once more from scratch
        done
    done
    echo "$name: FAILED, no mirror gave a good file (mirrors: ${mirrors[*]}); set TEACHER_MIRROR to another copy or train it: python train_teacher.py --model $name" >&2
    return 1
}

failed=()
for name in "${selected[@]}"; do
    fetch "$name" || failed+=("$name")
done
remove_empty_created # a teacher that failed leaves no empty {name}_vanilla/ (nor models/, save/) behind
good=$((${#selected[@]} - ${#failed[@]}))
echo "teachers: $good of ${#selected[@]} verified in $save_dir/models"
if [ ${#failed[@]} -gt 0 ]; then
    echo "error: failed: ${failed[*]}" >&2
    exit 1
fi
exit 0
