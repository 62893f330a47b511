#!/usr/bin/env bash
# Fetch the six published RepDistiller CIFAR-100 teachers into
# {save_dir}/models/{name}_vanilla/ckpt_epoch_240.pth, where train_student.py looks for them.
#
#   scripts/fetch_pretrained_teachers.sh [--only NAME]... [--source auto|mirrors|archive] [--sha256 FILE]
#                                        [--save_dir DIR] [--keep_archive] [--data_folder DIR] [--dry-run]
#
# Two kinds of source (--source auto, the default, tries the first, then the second for what it did not give):
# 1. Per-file mirrors (base URLs; a file is {base}/{name}_vanilla/ckpt_epoch_240.pth), tried in order:
#    http://shape2prog.csail.mit.edu/repo (RepDistiller's own, dead for years), then $TEACHER_MIRROR when set.
#    $TEACHER_MIRRORS (space-separated) replaces the whole list.
# 2. mdistiller's release archive cifar_teachers.tar ($TEACHER_ARCHIVE_URL overrides its URL), downloaded once into
#    {save_dir}/cifar_teachers.tar and kept there for the next teacher (deleted once all six are in place, unless
#    --keep_archive); scripts/teacher_archive.py extracts, checks and installs the members.
# Digests pinned in scripts/teachers.sha256 are always checked; the digest of an unpinned member is printed.
# Downloads go to a .part file kept between attempts and resumed (curl -C -); a dead mirror
# fails fast (connect timeout $TEACHER_CONNECT_TIMEOUT, default 15 s). Every file is checked
# (sha256 when --sha256 lists it, then scripts/verify_teacher.py: weights_only load + strict
# load into the architecture) before it is moved into place; a file that fails is deleted.
# A teacher already present and verified is not downloaded again. When CIFAR-100 is on disk
# ({data_folder}/cifar-100-python, default ./data) each new teacher's test accuracy is reported next to the published one.
# Python: $PYTHON, else .venv/bin/python, else python3. Exit 0 when every teacher is good,
# 1 when any failed, 2 on a usage error.

# `sh scripts/fetch_pretrained_teachers.sh` (as the published instructions say) runs dash on Debian: re-run under bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEACHERS=(wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50)
ORIGINAL_MIRROR="http://shape2prog.csail.mit.edu/repo"
ARCHIVE_URL="${TEACHER_ARCHIVE_URL:-https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar}"
PINS="$ROOT/scripts/teachers.sha256"
# the Python steps import this checkout (core/, models/, scripts/) even without the editable install
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
CONNECT_TIMEOUT="${TEACHER_CONNECT_TIMEOUT:-15}"

die() {
    echo "error: $*" >&2
    exit 2
}

usage() {
    cat <<EOF
usage: scripts/fetch_pretrained_teachers.sh [--only NAME]... [--source auto|mirrors|archive] [--sha256 FILE]
                                            [--save_dir DIR] [--keep_archive] [--data_folder DIR] [--dry-run]

Download and verify the published RepDistiller CIFAR-100 teachers into
DIR/models/NAME_vanilla/ckpt_epoch_240.pth (DIR defaults to save).

  --only NAME        fetch only this teacher (repeatable, or comma-separated); one of: ${TEACHERS[*]}
  --source SOURCE    auto (default): per-file mirrors, then mdistiller's release archive for what they did not give;
                     mirrors: per-file mirrors only; archive: the release archive only
  --sha256 FILE      sha256sum-format list; a file whose hash differs (or is not listed) is rejected
                     (digests pinned in scripts/teachers.sha256 are always checked)
  --save_dir DIR     root folder of the checkpoints (default: save)
  --keep_archive     keep DIR/cifar_teachers.tar even once all six teachers are in place (it is kept until then,
                     so a later teacher does not download it again; delete it by hand to free the space)
  --data_folder DIR  folder holding cifar-100-python/ (default ./data): when it is there, each new teacher's
                     CIFAR-100 test accuracy is reported next to the published one (a warning when >1 point lower)
  --dry-run          print the URLs that would be tried and exit

Environment: TEACHER_MIRROR (extra base URL tried after the original), TEACHER_MIRRORS
(space-separated base URLs replacing the whole list), TEACHER_ARCHIVE_URL (the release archive's URL),
TEACHER_CONNECT_TIMEOUT (seconds, default 15), PYTHON (interpreter used for verification).
EOF
}

only=()
only_given=0
sha_file=""
save_dir="save"
dry_run=0
source="auto"
keep_archive=0
data_folder="./data"
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
        --source)
            [ $# -ge 2 ] || die "--source needs one of: auto, mirrors, archive"
            source="$2"
            shift 2
            ;;
        --source=*) source="${1#*=}"; shift ;;
        --keep_archive) keep_archive=1; shift ;;
        --data_folder)
            [ $# -ge 2 ] || die "--data_folder needs a folder"
            data_folder="$2"
            shift 2
            ;;
        --data_folder=*) data_folder="${1#*=}"; shift ;;
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
case "$source" in
    auto | mirrors | archive) ;;
    *) die "--source '$source' is not one of: auto, mirrors, archive" ;;
esac
if [ -n "$sha_file" ] && [ -d "$sha_file" ]; then
    die "the --sha256 file '$sha_file' is a directory, not a file; pass a list written by sha256sum"
fi
if [ -n "$sha_file" ] && [ ! -f "$sha_file" ]; then
    die "the --sha256 file '$sha_file' does not exist; pass a list written by sha256sum"
fi
existing_above() { # path -> the path itself or its nearest ancestor that exists
    local probe="$1"
    while [ ! -e "$probe" ] && [ "$probe" != "$(dirname "$probe")" ]; do probe="$(dirname "$probe")"; done
    echo "$probe"
}
check_folder_flag() { # flag path [output]: a folder (existing or not), never a file or below one; output: writable
    local base
    [ -n "$2" ] || die "$1 is empty; pass a folder"
    [ ! -e "$2" ] || [ -d "$2" ] || die "$1 '$2' is a file, not a folder; pass a folder"
    base="$(existing_above "$2")"
    [ -d "$base" ] || die "$1 '$2' lies below the file '$base', not a folder; pass a folder"
    if [ -n "${3:-}" ] && { [ ! -w "$base" ] || [ ! -x "$base" ]; }; then
        die "cannot write to '$2' ('$base' is read-only); choose a writable $1"
    fi
}
check_folder_flag --save_dir "$save_dir" output
check_folder_flag --data_folder "$data_folder"

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
        if [ "$source" != archive ]; then
            for base in "${mirrors[@]}"; do
                echo "$name $(file_url "$base" "$name") -> $(destination "$name")"
            done
        fi
        if [ "$source" != mirrors ]; then
            echo "$name $ARCHIVE_URL (member cifar_teachers/${name}_vanilla/ckpt_epoch_240.pth, archive kept as $save_dir/cifar_teachers.tar) -> $(destination "$name")"
        fi
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

expected_sha256() { # name [file] -> the hash the file (default: the --sha256 list) gives, or nothing
    awk -v want="${1}_vanilla/ckpt_epoch_240.pth" -v bare="$1" '
        NF >= 2 {
            f = $2; sub(/^\*/, "", f); n = length(want); m = length(f)
            if (f == bare || f == bare ".pth" ||
                (m >= n && substr(f, m - n + 1) == want && (m == n || substr(f, m - n, 1) == "/"))) {
                print tolower($1); exit
            }
        }' "${2:-$sha_file}"
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
    if [ -f "$PINS" ] && want="$(expected_sha256 "$name" "$PINS")" && [ -n "$want" ]; then
        have="$(file_sha256 "$file")"
        if [ "$have" != "$want" ]; then
            echo "$name: sha256 of $file is $have, but scripts/teachers.sha256 pins $want; refused" >&2
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

report_accuracy() { # name file: the CIFAR-100 test accuracy next to the published one, when CIFAR-100 is on disk
    [ -n "$cifar_folder" ] || return 0
    "$PY" "$ROOT/scripts/verify_teacher.py" "$1" "$2" --data_folder "$cifar_folder" | tail -n +2 | sed "s/^/$1: /"
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
    [ "$source" != archive ] || return 1
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
                    echo "$name: saved $dest (sha256 $(file_sha256 "$dest"))"
                    report_accuracy "$name" "$dest"
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
    if [ "$source" = auto ]; then
        echo "$name: no per-file mirror gave a good file (mirrors: ${mirrors[*]}); trying the release archive" >&2
    else
        echo "$name: FAILED, no mirror gave a good file (mirrors: ${mirrors[*]}); set TEACHER_MIRROR to another copy, use --source archive, or train it: python train_teacher.py --model $name" >&2
    fi
    return 1
}

cifar_folder=""
if [ -f "$data_folder/cifar-100-python/test" ]; then
    cifar_folder="$data_folder"
elif [ -f "$data_folder/test" ] && [ "$(basename "$data_folder")" = cifar-100-python ]; then
    cifar_folder="$data_folder"
fi

failed=()
for name in "${selected[@]}"; do
    fetch "$name" || failed+=("$name")
done
if [ ${#failed[@]} -gt 0 ] && [ "$source" != mirrors ]; then
    make_folder "$save_dir" || echo "error: cannot create $save_dir" >&2
    if [ -d "$save_dir" ]; then
        args=(--save_dir "$save_dir")
        [ -z "$sha_file" ] || args+=(--sha256 "$sha_file")
        [ $keep_archive -eq 0 ] || args+=(--keep_archive)
        [ -z "$cifar_folder" ] || args+=(--data_folder "$cifar_folder")
        "$PY" "$ROOT/scripts/teacher_archive.py" "${args[@]}" "${failed[@]}"
    fi
    still=()
    for name in "${failed[@]}"; do
        if [ -f "$(destination "$name")" ]; then
            continue
        fi
        still+=("$name")
        from="neither the per-file mirrors nor the release archive"
        [ "$source" = auto ] || from="the release archive did not"
        echo "$name: FAILED, $from gave a good file; set TEACHER_ARCHIVE_URL or TEACHER_MIRROR to another copy, get it by hand (docs/teachers.md), or train it: python train_teacher.py --model $name" >&2
    done
    failed=(${still[@]+"${still[@]}"})
fi
remove_empty_created # a teacher that failed leaves no empty {name}_vanilla/ (nor models/, save/) behind
good=$((${#selected[@]} - ${#failed[@]}))
echo "teachers: $good of ${#selected[@]} verified in $save_dir/models"
if [ ${#failed[@]} -gt 0 ]; then
    echo "error: failed: ${failed[*]}" >&2
    exit 1
fi
exit 0
