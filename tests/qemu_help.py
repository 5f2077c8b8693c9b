"""`qemu-system-x86_64 -help` as QEMU releases print it, cut to the options vmrun asks about.

7.2 is this machine's binary (Debian 12), copied verbatim. The others are the help strings of
qemu-options.hx in each release, as the commits that changed them show: -run-with came in 8.1
(async-teardown, and chroot= from the 2023-07 pull that deprecated -chroot), -chroot and
-async-teardown went in 9.0, user= came in 9.1 (-runas deprecated), -runas went in 10.0. The
exit-with-parent patch (qemu-devel, 2025-10) moves user= to a continuation line.
"""

from __future__ import annotations


def _header(version: str, year: int) -> str:
    return (f"QEMU emulator version {version}\n"
            f"Copyright (c) 2003-{year} Fabrice Bellard and the QEMU Project developers\n"
            "usage: qemu-system-x86_64 [options] [disk_image]\n")


RUNAS = """\
-runas user     change to user id user just before starting the VM
                user can be numeric uid:gid instead
"""

SANDBOX = """\
-sandbox on[,obsolete=allow|deny][,elevateprivileges=allow|deny|children]
          [,spawn=allow|deny][,resourcecontrol=allow|deny]
                Enable seccomp mode 2 system call filter (default 'off').
                use 'obsolete' to allow obsolete system calls that are provided
                    by the kernel, but typically no longer used by modern
                    C library implementations.
                use 'elevateprivileges' to allow or deny the QEMU process ability
                    to elevate privileges using set*uid|gid system calls.
                    The value 'children' will deny set*uid|gid system calls for
                    main QEMU process but will allow forks and execves to run unprivileged
                use 'spawn' to avoid QEMU to spawn new threads or processes by
                     blocking *fork and execve
                use 'resourcecontrol' to disable process affinity and schedular priority
"""

ASYNC_TEARDOWN = "-async-teardown enable asynchronous teardown\n"

RUN_WITH_8_1 = """\
-run-with [async-teardown=on|off][,chroot=dir]
                Set miscellaneous QEMU process lifecycle options:
                async-teardown=on enables asynchronous teardown (Linux only)
                chroot=dir chroot to dir just before starting the VM
"""

RUN_WITH_9_1 = """\
-run-with [async-teardown=on|off][,chroot=dir][user=username|uid:gid]
                Set miscellaneous QEMU process lifecycle options:
                async-teardown=on enables asynchronous teardown (Linux only)
                chroot=dir chroot to dir just before starting the VM
                user=username switch to the specified user before starting the VM
                user=uid:gid ditto, but use specified user-ID and group-ID instead
"""

RUN_WITH_EXIT_WITH_PARENT = """\
-run-with [async-teardown=on|off][,chroot=dir]
          [,exit-with-parent=on|off][,user=username|uid:gid]
                Set miscellaneous QEMU process lifecycle options:
                async-teardown=on enables asynchronous teardown (Linux only)
                exit-with-parent=on causes QEMU to exit if the parent
                  process of QEMU exits (Linux, FreeBSD, macOS only)
                chroot=dir chroot to dir just before starting the VM
                user=username switch to the specified user before starting the VM
                user=uid:gid ditto, but use specified user-ID and group-ID instead
"""

MSG = """\
-msg [timestamp[=on|off]][,guest-name=[on|off]]
                control error message format
                timestamp=on enables timestamps (default: off)
                guest-name=on enables guest name prefix but only if
                              -name guest option is set (default: off)
"""

HELP_7_2 = (_header("7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", 2022)
            + "-chroot dir     chroot to dir just before starting the VM\n"
            + RUNAS + SANDBOX + ASYNC_TEARDOWN + MSG)
HELP_8_2 = (_header("8.2.0", 2023)
            + "-chroot dir     chroot to dir just before starting the VM (deprecated)\n"
            + RUNAS + SANDBOX + ASYNC_TEARDOWN + RUN_WITH_8_1 + MSG)
HELP_9_0 = _header("9.0.0", 2024) + RUNAS + SANDBOX + RUN_WITH_8_1 + MSG
HELP_9_1 = _header("9.1.0", 2024) + RUNAS + SANDBOX + RUN_WITH_9_1 + MSG
HELP_10_0 = _header("10.0.0", 2025) + SANDBOX + RUN_WITH_9_1 + MSG
HELP_USER_ON_CONTINUATION_LINE = SANDBOX + RUN_WITH_EXIT_WITH_PARENT + MSG
