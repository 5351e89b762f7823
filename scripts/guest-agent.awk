# scripts/guest-agent.awk: a stand-in for the QEMU guest agent (qemu-ga) in the
# unicompute test guest (scripts/guest-template.sh installs it as /etc/uc-agent.awk),
# for busybox awk. Its standard input and output are the agent's virtio-serial port
# (org.qemu.guest_agent.0), opened once by /init. The protocol is qemu-ga's: one JSON
# command a line in, one JSON answer a line out; only the commands that libvirt and
# the kvm plugin send are served:
#
#   guest-sync {"id": N}        -> {"return": N}          (libvirt, before each command)
#   guest-ping                  -> {"return": {}}
#   guest-info                  -> {"return": {"version": .., "supported_commands": [..]}}
#   guest-exec {"path", "arg": [..], "env": [..], "input-data": B64, "capture-output"}
#                               -> {"return": {"pid": P}}
#        the command runs in the background (P: the shell that runs it), its standard
#        input the decoded input-data (else /dev/null), with exactly the given
#        environment when "env" is there (as qemu-ga: env -i); a program that does
#        not exist is refused as qemu-ga refuses it (its spawn fails: no pid).
#   guest-exec-status {"pid": P}
#                               -> {"return": {"exited": false}} while it runs, then
#                                  {"return": {"exited": true, "exitcode": C,
#                                   "out-data": B64, "err-data": B64}} once (then P is
#                                  forgotten, as qemu-ga does)
#   anything else               -> {"error": {"class": "CommandNotFound", ..}}
#        guest-shutdown included: libvirt then presses the ACPI power button, which
#        /init watches (the tests see "UCGUEST acpi power button").
#
# Arguments are read by name from a small JSON parser (any order, any spacing,
# string escapes decoded). Bytes before the first "{" of a line are skipped: libvirt
# may send a 0xFF delimiter. With UC_AGENT_DEBUG set, every line in and out is also
# printed on the serial console ("UCGUEST agent < ..", "UCGUEST agent > ..").

BEGIN {
    # Where each command's input, output and exit code are kept while it runs
    # (UC_AGENT_RUN elsewhere: to try this file on a host with busybox awk).
    RUN = ENVIRON["UC_AGENT_RUN"] != "" ? ENVIRON["UC_AGENT_RUN"] : "/run/uc-agent"
    system("mkdir -p " RUN)
    DEBUG = ENVIRON["UC_AGENT_DEBUG"] != ""
    seq = 0
}

{
    line = $0
    at = index(line, "{")
    if (!at) next
    line = substr(line, at)
    if (DEBUG) debug("<", line)
    if (!parse(line)) {
        error("GenericError", "JSON parse error")
        next
    }
    cmd = J["execute"]
    if (cmd == "guest-sync" || cmd == "guest-sync-delimited") {
        # The id as it came (a number's text: awk would print a large one as 1e+12).
        answer(J["arguments.id"] == "" ? "0" : J["arguments.id"])
    } else if (cmd == "guest-ping") {
        answer("{}")
    } else if (cmd == "guest-info") {
        answer("{\"version\":\"uc-agent\",\"supported_commands\":[" \
            supported("guest-sync") "," supported("guest-sync-delimited") "," \
            supported("guest-ping") "," supported("guest-info") "," \
            supported("guest-exec") "," supported("guest-exec-status") "]}")
    } else if (cmd == "guest-exec") {
        guest_exec()
    } else if (cmd == "guest-exec-status") {
        guest_exec_status()
    } else {
        error("CommandNotFound", "The command " cmd " has not been found")
    }
}

# ---- answers --------------------------------------------------------------------

function send(s) {
    print s
    fflush()
    if (DEBUG) debug(">", s)
}
function answer(value) { send("{\"return\":" value "}") }
function error(class, desc) {
    send("{\"error\":{\"class\":\"" class "\",\"desc\":" jstr(desc) "}}")
}
function supported(name) {
    return "{\"name\":\"" name "\",\"enabled\":true,\"success-response\":true}"
}
function debug(dir, s) {
    print "UCGUEST agent " dir " " s > "/dev/console"
    fflush("/dev/console")
}

# ---- guest-exec -----------------------------------------------------------------

function guest_exec(   path, dir, cmdline, i, n, pid, input) {
    path = J["arguments.path"]
    if (path == "") return error("GenericError", "Parameter 'path' is missing")
    if (!runnable(path))
        return error("GenericError", \
            "Failed to execute child process \"" path "\" (No such file or directory)")
    seq++
    dir = RUN "/" seq
    system("mkdir -p " dir)
    input = "/dev/null"
    if ("arguments.input-data" in J) {
        # Written by awk, decoded by base64: no size limit of a command line.
        printf "%s", J["arguments.input-data"] > (dir "/in.b64")
        close(dir "/in.b64")
        if (system("base64 -d " dir "/in.b64 >" dir "/in") != 0)
            return error("GenericError", "input-data is not base64")
        input = dir "/in"
    }
    # The program and its arguments, each quoted for sh; "env -i NAME=VALUE.." first
    # when the client gives an environment.
    cmdline = ""
    if ("arguments.env#" in J) {
        cmdline = "env -i"
        n = J["arguments.env#"]
        for (i = 0; i < n; i++) cmdline = cmdline " " sq(J["arguments.env." i])
    }
    cmdline = cmdline " " sq(path)
    n = J["arguments.arg#"] + 0
    for (i = 0; i < n; i++) cmdline = cmdline " " sq(J["arguments.arg." i])
    # In the background: its exit code lands in DIR/code (written last, by rename),
    # its output in DIR/out and DIR/err.
    launch = "(" cmdline " <" input " >" dir "/out 2>" dir "/err; echo $? >" dir "/code.new; " \
        "mv " dir "/code.new " dir "/code) </dev/null >/dev/null 2>&1 & echo $!"
    pid = ""
    launch | getline pid
    close(launch)
    if (pid == "") return error("GenericError", "could not start " path)
    DIR[pid] = dir
    answer("{\"pid\":" pid "}")
}

function guest_exec_status(   pid, dir, code, out, err) {
    pid = J["arguments.pid"]
    if (!(pid in DIR)) return error("GenericError", "Invalid parameter 'pid'")
    dir = DIR[pid]
    code = ""
    getline code < (dir "/code")
    close(dir "/code")
    if (code == "") return answer("{\"exited\":false}")
    out = b64(dir "/out")
    err = b64(dir "/err")
    system("rm -rf " dir)
    delete DIR[pid]
    answer("{\"exited\":true,\"exitcode\":" (code + 0) ",\"out-data\":\"" out "\",\"err-data\":\"" err "\"}")
}

# Whether PATH names a program qemu-ga could spawn: a path with a "/" as it is, else
# looked up in PATH (as G_SPAWN_SEARCH_PATH does; sh's builtins do not count).
function runnable(path,   script) {
    script = "case $1 in */*) [ -f \"$1\" ] && [ -x \"$1\" ]; exit;; esac; " \
        "IFS=:; for d in $PATH; do [ -f \"$d/$1\" ] && [ -x \"$d/$1\" ] && exit 0; done; exit 1"
    return system("sh -c " sq(script) " uc-agent " sq(path)) == 0
}

# A file as base64 on one line (empty for an empty file).
function b64(file,   cmd, s) {
    cmd = "base64 -w 0 " file
    s = ""
    cmd | getline s
    close(cmd)
    return s
}

# S quoted for sh: in single quotes, each ' as '\''.
function sq(s,   out, i) {
    out = ""
    while ((i = index(s, "'")) > 0) {
        out = out substr(s, 1, i - 1) "'\\''"
        s = substr(s, i + 1)
    }
    return "'" out s "'"
}

# S as a JSON string.
function jstr(s,   out, c, i) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\"" || c == "\\") out = out "\\" c
        else if (c == "\n") out = out "\\n"
        else if (c == "\t") out = out "\\t"
        else if (c < " ") out = out sprintf("\\u%04x", ord(c))
        else out = out c
    }
    return "\"" out "\""
}
function ord(c,   i) {
    for (i = 1; i < 32; i++) if (sprintf("%c", i) == c) return i
    return 0
}

# ---- JSON -----------------------------------------------------------------------
# parse(text) fills J: J["a"] for a member a of the top object, J["a.b"] for a member
# b of an object a, J["a.0"].. for the items of an array a and J["a#"] for their
# count. Strings are decoded; numbers, true, false and null are kept as their text.
# Answers 0 when the text is not one JSON object.

function parse(text) {
    delete J
    src = text
    len = length(src)
    pos = 1
    ws()
    if (substr(src, pos, 1) != "{" || !value("")) return 0
    ws()
    return pos > len
}

function ws() {
    while (pos <= len && index(" \t\r\n", substr(src, pos, 1))) pos++
}

function value(path,   c) {
    ws()
    c = substr(src, pos, 1)
    if (c == "{") return object(path)
    if (c == "[") return array(path)
    if (c == "\"") return string(path)
    if (match(substr(src, pos, 64), /^(-?[0-9][0-9.eE+-]*|true|false|null)/)) {
        J[path] = substr(src, pos, RLENGTH)
        pos += RLENGTH
        return 1
    }
    return 0
}

function object(path,   key, c) {
    pos++
    ws()
    if (substr(src, pos, 1) == "}") { pos++; return 1 }
    while (1) {
        ws()
        if (substr(src, pos, 1) != "\"" || !string("\001key")) return 0
        key = J["\001key"]
        delete J["\001key"]
        ws()
        if (substr(src, pos, 1) != ":") return 0
        pos++
        if (!value(path == "" ? key : path "." key)) return 0
        ws()
        c = substr(src, pos, 1)
        pos++
        if (c == "}") return 1
        if (c != ",") return 0
    }
}

function array(path,   n, c) {
    pos++
    n = 0
    ws()
    if (substr(src, pos, 1) == "]") { pos++; J[path "#"] = 0; return 1 }
    while (1) {
        if (!value(path "." n)) return 0
        n++
        ws()
        c = substr(src, pos, 1)
        pos++
        if (c == "]") { J[path "#"] = n; return 1 }
        if (c != ",") return 0
    }
}

function string(path,   out, c, cp, lo) {
    pos++
    out = ""
    while (pos <= len) {
        # A run of plain characters at once (input-data can be long).
        if (match(substr(src, pos), /^[^"\\]+/)) {
            out = out substr(src, pos, RLENGTH)
            pos += RLENGTH
            continue
        }
        c = substr(src, pos, 1)
        pos++
        if (c == "\"") { J[path] = out; return 1 }
        # An escape.
        c = substr(src, pos, 1)
        pos++
        if (c == "n") out = out "\n"
        else if (c == "t") out = out "\t"
        else if (c == "r") out = out "\r"
        else if (c == "b") out = out "\b"
        else if (c == "f") out = out "\f"
        else if (c == "u") {
            cp = hex(substr(src, pos, 4))
            pos += 4
            # A surrogate pair: one code point.
            if (cp >= 55296 && cp < 56320 && substr(src, pos, 2) == "\\u") {
                lo = hex(substr(src, pos + 2, 4))
                if (lo >= 56320 && lo < 57344) {
                    cp = 65536 + (cp - 55296) * 1024 + (lo - 56320)
                    pos += 6
                }
            }
            out = out utf8(cp)
        } else out = out c   # \" \\ \/
    }
    return 0
}

function hex(s,   i, n) {
    n = 0
    for (i = 1; i <= length(s); i++)
        n = n * 16 + index("0123456789abcdef", tolower(substr(s, i, 1))) - 1
    return n
}

# A code point as UTF-8 bytes (NUL, which no argument can hold, is dropped).
function utf8(cp) {
    if (cp == 0) return ""
    if (cp < 128) return sprintf("%c", cp)
    if (cp < 2048) return sprintf("%c%c", 192 + int(cp / 64), 128 + cp % 64)
    if (cp < 65536)
        return sprintf("%c%c%c", 224 + int(cp / 4096), 128 + int(cp / 64) % 64, 128 + cp % 64)
    return sprintf("%c%c%c%c", 240 + int(cp / 262144), 128 + int(cp / 4096) % 64, \
        128 + int(cp / 64) % 64, 128 + cp % 64)
}
