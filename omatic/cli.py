"""The `pfq-omatic` command line: parse arguments, call the library, map errors to exit codes.

Exit codes: 0 ok, 1 user error, 2 build/verify/lab failure; 130 interrupted, 141 the
reader of stdout went away (`| head`), as for any Unix command. Expected failures print
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from omatic import __version__
from omatic.errors import BuildError, OmaticError, UserError
from omatic.pfq.capture import CaptureOptions, plan_capture, run_capture
from omatic.verify.signature import DKMS_CERT

Handler = Callable[[argparse.Namespace, TextIO], int]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage; here bad usage is a user error (exit 1)."""

    def error(self, message: str) -> Any:
        raise UserError(f"{message} (see '{self.prog} --help')")


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _print_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=1)
    out.write("\n")


def _print_sites(report: Any, out: TextIO) -> None:
    for site in report.sites:
        where = f"{site.file}:{site.line}:{site.column}"
        func = site.function or "-"
        out.write(f"{where}\t{site.callee}\t{site.context}\t{func}\t{site.action}\t{site.reason}\n")
    for problem in report.problems:
        out.write(f"{problem['file']}\tproblem\t{problem['error']}\n")


def _summary(report: Any) -> str:
    t = report.totals()
    actions = ", ".join(f"{n} {a}" for a, n in t["by_action"].items()) or "none"
    return (f"{t['sites']} site(s) in {t['files_with_sites']} of {t['files_scanned']} file(s) "
            f"({actions}); {t['problems']} problem(s)")


def cmd_scan(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.build.tree import scan_tree
    from omatic.rules import load_rules

    report = scan_tree(Path(args.path), load_rules(), jobs=args.jobs)
    if args.json:
        _print_json(report.to_json("scan"), out)
    else:
        _print_sites(report, out)
        out.write(_summary(report) + "\n")
    return 0


def cmd_patch(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.build.tree import PATCH_NAME, patch_tree
    from omatic.rules import load_rules

    report = patch_tree(Path(args.src), Path(args.out), load_rules(), jobs=args.jobs)
    if args.json:
        _print_json(report.to_json("patch"), out)
    else:
        for f in report.files:
            if f.status != "unchanged":
                out.write(f"{f.file}\t{f.status}\t{len(f.edits)} edit(s)\t{f.reason}\n")
        t = report.totals()
        out.write(f"{_summary(report)}; {t['files_rewritten']} file(s) rewritten, "
                  f"{t['files_refused']} refused\n")
        out.write(f"wrote {args.out} (diff: {Path(args.out) / PATCH_NAME})\n")
    return 0


def cmd_kernels(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.kernels.find import default_kernel, installed_kernels

    if args.available:
        return _available_kernels(args, out)
    kernels = installed_kernels()
    default = default_kernel().release if kernels else None
    if args.json:
        _print_json({"default": default, "kernels": [k.to_json() for k in kernels]}, out)
        return 0
    if not kernels:
        out.write("no kernel headers installed (Debian: apt-get install linux-headers-amd64)\n")
        return 0
    for k in kernels:
        extras = [name for name, present in (("source", k.source_tarball),
                                             ("boot image", k.boot_image),
                                             ("modules", k.modules_dir)) if present]
        mark = "*" if k.release == default else " "
        out.write(f"{mark} {k.release}\t{k.build_dir}\t{', '.join(extras) or '-'}\n")
    out.write("(* the default kernel)\n")
    return 0


def cmd_drivers(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.build.nics import nic_drivers, render_table

    kernel = _kernels_of([args.kernel] if args.kernel else None)[0]
    drivers = nic_drivers(kernel)
    if args.json:
        _print_json({"kernel": kernel.release, "drivers": [d.to_json() for d in drivers]},
                    out)
    else:
        out.write(render_table(drivers, kernel))
    return 0


def _available_kernels(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.kernels.archive import available_kernels
    from omatic.kernels.find import installed_kernels
    from omatic.kernels.system import cached_systems

    here = {k.release for k in installed_kernels()}
    kept = {p.removeprefix("linux-headers-"): c["suite"] for c in cached_systems()
            for p in c.get("packages", []) if p.startswith("linux-headers-")}
    rows = []
    for kernel in available_kernels(refresh=args.refresh):
        if kernel.missing:
            continue  # listed by an index, but not all a build needs is served
        where = ("here" if kernel.release in here
                 else f"{kernel.suite} system" if kernel.release in kept else "")
        rows.append({**kernel.to_json(), "installed": where or None})
    if args.json:
        _print_json({"kernels": rows}, out)
        return 0
    for row in rows:
        out.write(f"{row['release']}\t{row['suite']}\t{row['flavor']}\t"
                  f"{row['installed'] or '-'}\n")
    return 0


def _kernels_of(specs: list[str] | None) -> list[Any]:
    from omatic.kernels.find import default_kernel, find_kernel

    return [find_kernel(s, note=_note) for s in specs] if specs else [default_kernel()]


def cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.build.pipeline import build_driver
    from omatic.manifests import resolve
    from omatic.progress import Progress

    name, manifest = resolve(args.driver)
    if args.dry_run:
        return _dry_run_build(args, name, out)
    results, code = [], 0
    for kernel in _kernels_of(args.kernel):
        req = _build_request(args, name, kernel)
        progress = Progress(f"{name} {kernel.release}")
        result = build_driver(req, progress.step)
        code = max(code, 0 if result.ok else 2)
        results.append({"kernel": kernel.release, "out": str(result.out_dir),
                        "up_to_date": result.up_to_date, "ok": result.ok,
                        "report": result.report})
        if not args.json:
            _print_build(result, manifest, out)
    if args.json:
        _print_json({"driver": name, "builds": results}, out)
    return code


def _build_request(args: argparse.Namespace, name: str, kernel: Any) -> Any:
    from omatic.build.pipeline import BuildRequest

    return BuildRequest(driver=name, kernel=kernel, out_root=Path(args.out),
                        jobs=args.jobs or os.cpu_count() or 1,
                        kernel_tree=Path(args.kernel_tree) if args.kernel_tree else None,
                        source_dir=Path(args.source) if args.source else None,
                        force=args.force, vanilla=args.vanilla)


def _dry_run_build(args: argparse.Namespace, name: str, out: TextIO) -> int:
    """`build --dry-run`: the commands a build would run, per kernel, running none. A
    kernel not on this machine nor in a kept system would first get a system of its
    suite: its mmdebstrap command is shown, and the build's commands come from inside it
    (a dry run there once it is made)."""
    from omatic.build.pipeline import dry_run_commands
    from omatic.kernels.archive import ArchiveKernel
    from omatic.kernels.find import default_kernel, find_or_offered
    from omatic.kernels.system import SystemSpec

    plans: list[dict[str, Any]] = []
    for kernel in find_or_offered(args.kernel) if args.kernel else [default_kernel()]:
        if isinstance(kernel, ArchiveKernel):
            system = SystemSpec.of(kernel.suite, kernel.packages())
            plans.append({"kernel": kernel.release, "system": system.to_json(), "commands": [
                shlex.join(system.mmdebstrap_argv(Path(f"{kernel.suite}.tar"))),
                (f"# then, in that system: pfq-omatic build {name} --kernel "
                 f"{kernel.release} --dry-run")]})
            continue
        req = _build_request(args, name, kernel)
        plans.append({"kernel": kernel.release, "system": None,
                      "commands": dry_run_commands(req)})
    if args.json:
        _print_json({"driver": name, "dry_run": plans}, out)
    else:
        for plan in plans:
            out.writelines(line + "\n" for line in plan["commands"])
    return 0


def _print_build(result: Any, manifest: Any, out: TextIO) -> None:
    from omatic.verify.checks import report_lines

    report = result.report
    totals = report["rewrite"]["totals"]
    state = "up to date" if result.up_to_date else "built"
    what = ("as it is, not rewritten" if report.get("vanilla") else
            f"{totals['sites']} site(s), {totals['by_action'].get('rewrite', 0)} rewritten")
    out.write(f"{report['driver']} for {report['kernel']['release']}: {state} in "
              f"{result.out_dir} ({what})\n")
    for line in report_lines(report["verify"]):
        out.write(f"  {line}\n")
    if manifest is not None and manifest.limits:
        out.write(f"  note: {manifest.limits}\n")
    verdict = "verified" if result.ok else "VERIFY FAILED"
    out.write(f"  {verdict}: {', '.join(report['modules'])}\n")
    if result.ok:
        _print_load(report, result.out_dir, out)


def _print_load(report: Any, out_dir: Path, out: TextIO) -> None:
    """Where the pfq.ko the driver needs is, and how to load both (on a machine running
    that kernel, in place of the in-tree driver)."""
    kos = [shlex.quote(str(out_dir / name)) for name in report["modules"]]
    names = " ".join(name.removesuffix(".ko") for name in report["modules"])
    release = report["kernel"]["release"]
    if report.get("vanilla"):
        out.write(f"  load (on {release}): sudo rmmod {names}; sudo insmod "
                  f"{' '.join(kos)}\n")
        return
    pfq = Path(report["kmod"]["dir"]) / "pfq.ko"
    out.write(f"  needs pfq.ko: {pfq}\n")
    out.write(f"  load (on {release}): sudo rmmod {names}; sudo insmod "
              f"{shlex.quote(str(pfq))}; " + "; ".join(f"sudo insmod {ko}" for ko in kos)
              + "\n")


def cmd_dkms(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.build.dkms import PACKAGE, build_deb, write_tree
    from omatic.kernels.find import find_kernel, installed_kernels
    from omatic.manifests import resolve
    from omatic.progress import Progress

    drivers = list(dict.fromkeys(resolve(d)[0] for d in args.drivers))
    kernels = ([find_kernel(s, note=_note) for s in args.kernel] if args.kernel
               else installed_kernels())
    out_dir = Path(args.out)
    progress = Progress("dkms")
    tree = write_tree(drivers, kernels, out_dir / f"{PACKAGE}-{__version__}",
                      command=shlex.join(["pfq-omatic", "dkms", *sys.argv[2:]]),
                      jobs=args.jobs or os.cpu_count() or 1, step=progress.step)
    if args.deb:
        try:
            with progress.step("deb"):
                build_deb(tree, out_dir)
        except BaseException:
            shutil.rmtree(tree.path, ignore_errors=True)
            raise
    if args.json:
        _print_json(tree.to_json(), out)
        return 0
    out.write(f"wrote {tree.path}: pfq.ko and {', '.join(drivers)} for kernel series "
              f"{', '.join(s.name for s in tree.series)}\n")
    for s in tree.series:
        sites = ", ".join(f"{d.name} {d.rewritten}/{d.sites}" for d in s.drivers)
        out.write(f"  {s.name}: sources of {s.kernel.release} (serves "
                  f"{', '.join(s.kernels)}); sites rewritten: {sites}\n")
    if tree.deb is not None:
        warnings = [line for line in tree.lintian if line.startswith("W:")]
        out.write(f"wrote {tree.deb} (lintian: no errors, {len(warnings)} warning(s))\n")
        for line in warnings:
            out.write(f"  {line}\n")
        out.write(f"next: sudo apt install {shlex.quote(str(tree.deb.absolute()))}\n")
    else:
        # What DKMS does with the tree; the package (--deb) does the same on install.
        module = f"-m {PACKAGE} -v {tree.version}"
        out.write(f"next: sudo cp -r {shlex.quote(str(tree.path))} /usr/src/ && sudo dkms add "
                  f"{module} && sudo dkms install {module} (or run this command again with "
                  "--deb for a Debian package)\n")
    return 0


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.build.pipeline import ensure_kmod
    from omatic.errors import PathError
    from omatic.verify.checks import verify_modules

    kos = [Path(k) for k in args.kos]
    for ko in kos:
        if not ko.is_file():
            raise PathError("no such module file", path=ko)
    built_for = _vermagic_release(kos)
    (kernel,) = _kernels_of([args.kernel or built_for])
    if kernel.release != built_for:
        # Every symbol would disagree: one line says why instead.
        raise VerifyMismatchError(modules=", ".join(k.name for k in kos), built=built_for,
                                  asked=kernel.release)
    report_path = Path(args.report) if args.report else kos[0].parent / "report.json"
    rewrite = None
    if report_path.is_file():
        try:
            data = json.loads(report_path.read_text())
            # A build's report.json holds the rewrite under "rewrite"; patch's is the rewrite.
            rewrite = data.get("rewrite", data) if isinstance(data, dict) else None
        except ValueError:
            raise UserError(f"{report_path}: not a pfq-omatic report (bad JSON)") from None
    elif args.report:
        raise PathError("no such report", path=report_path)
    symvers = (Path(args.pfq_symvers) if args.pfq_symvers
               else ensure_kmod(kernel, args.jobs or os.cpu_count() or 1).symvers)
    cert = Path(args.cert) if args.cert else DKMS_CERT if DKMS_CERT.is_file() else None
    verdict = verify_modules(kos, kernel, symvers, rewrite_report=rewrite, cert=cert,
                             cert_required=bool(args.cert))
    if args.json:
        _print_json(verdict.to_json(), out)
    else:
        for line in verdict.lines():
            out.write(line + "\n")
    return 0 if verdict.ok else 2


def _lab_hint(name: str) -> str:
    """"; did you mean e1000e?" for a name close to a driver the lab knows a model of."""
    import difflib

    from omatic.manifests import load_manifests

    known = [n for m in load_manifests().values() if m.nic_model for n in (m.name, *m.aliases)]
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.7)
    return f" (did you mean {', '.join(near)}?)" if near else ""


class VerifyMismatchError(BuildError):
    template = ("{modules}: built for {built} (its vermagic), not for {asked}; verify it "
                "with --kernel {built}, or leave --kernel out")


def _vermagic_release(kos: Sequence[Path]) -> str:
    """The kernel release the modules were built for, from their vermagic."""
    from omatic.errors import PathError
    from omatic.verify.modfile import KernelModule

    releases = {}
    for ko in kos:
        try:
            vermagic = KernelModule(ko).modinfo().get("vermagic", [""])[0]
        except OmaticError as err:
            raise PathError(f"not a kernel module: {err}", path=ko) from None
        if not vermagic.split():
            raise PathError("no vermagic in its .modinfo: not a kernel module", path=ko)
        releases[ko.name] = vermagic.split()[0]
    if len(set(releases.values())) > 1:
        raise UserError("the modules were built for different kernels: " + ", ".join(
            f"{name} for {release}" for name, release in releases.items()))
    return next(iter(releases.values()))


class NotEmulatedError(UserError):
    """QEMU has no device this driver drives; a matrix shows the lab cell as a skip."""

    template = "the lab cannot prove {driver}: {why}"


def cmd_lab(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.lab.driver import GuestError, LabConfig, run_lab
    from omatic.manifests import resolve
    from omatic.progress import Progress

    name, manifest = resolve(args.driver)
    model = args.nic_model or (manifest.nic_model if manifest else "")
    if manifest is not None and manifest.no_lab and not args.nic_model:
        raise NotEmulatedError(driver=name, why=manifest.no_lab)
    if not model:
        raise UserError(f"no QEMU NIC model known for {name}{_lab_hint(name)}: pass "
                        "--nic-model (qemu-system-x86_64 -device help lists them)")
    results, code = [], 0
    for kernel in _kernels_of(args.kernel):
        config = LabConfig(driver=name, kernel=kernel, nic_model=model, frames=args.frames,
                           out_root=Path(args.out), jobs=args.jobs or os.cpu_count() or 1,
                           keep=args.keep, timeout=args.timeout, accel=args.accel,
                           installed=Path(args.installed) if args.installed else None,
                           companions=manifest.companions if manifest else (),
                           qemu_min=manifest.qemu_min if manifest else "",
                           fanout=args.fanout)
        progress = Progress(f"lab {name} {kernel.release}")
        try:
            result = run_lab(config, progress.step)
        except GuestError as err:
            if not args.json:
                raise
            print(f"pfq-omatic: error: {err}", file=sys.stderr)
            results.append(json.loads((config.out_dir / "lab.json").read_text()))
            code = 2
            continue
        code = max(code, 0 if result.ok else 2)
        results.append(result.report)
        if not args.json:
            _print_lab(result.report, out)
    if args.json:
        _print_json({"driver": name, "labs": results}, out)
    return code


def cmd_hooks(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.lab.console import check_timeout
    from omatic.lab.hooks import HookLabConfig, run_hook_lab
    from omatic.pcap.build import lab_libpcap
    from omatic.progress import Progress

    reports, code = [], 0
    kernels = _kernels_of(args.kernel)
    check_timeout(args.timeout)
    jobs = args.jobs or os.cpu_count() or 1
    # Built once the request is known to be good: it may take minutes.
    libdir = lab_libpcap(jobs, note=_note).libdir if args.pcap else None
    for kernel in kernels:
        config = HookLabConfig(kernel=kernel, out_root=Path(args.out), jobs=jobs,
                               timeout=args.timeout, accel=args.accel, keep=args.keep,
                               fuzz_seed=args.fuzz_seed, pcap_libdir=libdir)
        result = run_hook_lab(config, Progress(f"hooks {kernel.release}").step)
        reports.append(result.report)
        code = max(code, 0 if result.ok else 2)
        if args.json:
            continue
        report = result.report
        out.write(f"hooks on {kernel.release} (QEMU {report['qemu']['version'] or '?'}, "
                  f"{report['accel']}, ring_slots={report['ring_slots']}, fuzz seed "
                  f"{report['fuzz_seed']}): guest ran {report['guest_seconds']} s\n")
        for document in report["results"].values():
            for test in document:
                cases = ", ".join(f"{s['name']} {'ok' if s['ok'] else 'FAIL'}"
                                  for s in test.get("subtests", []))
                out.write(f"  {test['name']:26} {'ok' if test['ok'] else 'FAIL'}"
                          f"{'  (' + cases + ')' if cases else ''}\n")
        for failure in report["failures"]:
            out.write(f"  FAIL {failure}\n")
        # The last line says it all: a matrix cell shows it as its reason.
        failures = report["failures"]
        out.write("  ok\n" if result.ok else f"  failed ({len(failures)}): {failures[0]}\n")
    if args.json:
        _print_json({"hooks": reports}, out)
    return code


def cmd_capture(args: argparse.Namespace, out: TextIO) -> int:
    options = CaptureOptions(
        devices=args.devices, output=Path(args.write), group=args.group, steer=args.steer,
        filter=args.filter, vlan=args.vlan, caplen=args.caplen, slots=args.slots,
        workers=args.workers, count=args.count, duration=args.duration,
        config=Path(args.config) if args.config else None, mode=args.mode)
    return run_capture(plan_capture(options, os.environ), out)


def _add_capture(sub: Any) -> None:
    p = sub.add_parser(
        "capture", help="capture from devices with N workers fanned out by a PFQ group",
        description="Capture the frames of DEV (DEV^DEV...: several devices) through "
                    "/dev/pfq with N worker processes in one PFQ group, each writing its "
                    "own pcap. Settings: these options, else the PCAP_* environment "
                    "(PCAP_GROUP, PCAP_FANOUT, PCAP_CAPLEN, PCAP_GROUP_<dev>), else "
                    "--config (or PCAP_CONFIG). Ctrl-C or SIGTERM: every worker finishes "
                    "its record and closes its file; exit 0. A worker that dies: exit 2.")
    p.set_defaults(handler=cmd_capture)
    p.add_argument("devices", metavar="DEV[^DEV...]", help="the device(s) to capture on")
    p.add_argument("-w", "--write", required=True, metavar="FILE",
                   help="worker i writes FILE with i before its extension (w.pcap: "
                        "w.0.pcap, w.1.pcap...), classic pcap with ns timestamps")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes, 1..64 (default: 1)")
    p.add_argument("--group", type=int, metavar="G", help="the PFQ group, 0..63 "
                   "(default: group_<dev> or def_group of the configuration, else 0)")
    p.add_argument("--steer", metavar="MODE",
                   help="how the group spreads frames over the workers: hash (symmetric "
                        "flow hash), rr, copy (all to each), cpu, queue, rnd; aliases lb, "
                        "qm, random (default: the configuration's fanout, else hash)")
    p.add_argument("--filter", metavar="EXPR",
                   help="a pcap-filter expression (compiled by tcpdump -ddd)")
    p.add_argument("--vlan", metavar="IDS", help="pass only these VLAN ids: 10,20-29; "
                   "add 'untagged' to pass frames without a tag too")
    p.add_argument("--caplen", type=int, metavar="N",
                   help="bytes kept per frame, 64..65535 (default: pfq.ko's snaplen)")
    p.add_argument("--slots", type=int, metavar="N",
                   help="ring slots per worker (default: pfq.ko's ring_slots)")
    p.add_argument("--count", type=int, metavar="N",
                   help="stop after N frames in all, over every worker (as tcpdump -c)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--config", metavar="FILE",
                   help="fan-out configuration: key[@group] = value lines (def_group, "
                        "fanout[@group], caplen, group_<dev>)")
    p.add_argument("--mode", choices=("tap", "capture"), default="tap",
                   help="the devices' PFQ mode while capturing: tap (the stack gets the "
                        "frames too) or capture (it does not); restored at the end "
                        "(default: tap)")


def cmd_pcap(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.kernels.system import find_suite
    from omatic.pcap.build import build_pcap, default_prefix, host_suite

    suite = find_suite(args.suite or host_suite())
    prefix = Path(args.prefix) if args.prefix else default_prefix(suite.name)
    if args.deb:
        from omatic.pcap.deb import check_tools
        check_tools()
    built = build_pcap(suite, prefix, jobs=args.jobs or os.cpu_count() or 1,
                       force=args.force, note=_note)
    deb = None
    if args.deb:
        from omatic.pcap.deb import build_deb
        deb = build_deb(built, Path(args.out))
    if args.json:
        _print_json({**built.to_json(), "deb": str(deb.path) if deb else None,
                     "lintian": deb.lintian if deb else []}, out)
        return 0
    option = f" --prefix {shlex.quote(str(prefix))}" if args.prefix else ""
    out.write(f"libpcap {built.version} ({built.lib_version}) in {built.libdir}\n"
              f"run an application on it: pfq-omatic run{option} -- tcpdump -i pfq:eth0\n"
              f"or: LD_LIBRARY_PATH={shlex.quote(str(built.libdir))} tcpdump -i pfq:eth0\n")
    if deb:
        out.write(f"its package (lintian: no error, no warning): {deb.path}\n")
    return 0


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.pcap.run import find_build, run_app

    build = find_build(Path(args.prefix) if args.prefix else None)
    out.flush()
    run_app(build, args.argv, os.environ)
    return 0  # not reached: the application replaced this process


def _add_pcap(sub: Any) -> None:
    help = ("build Debian's libpcap with PFQ's capture source (pfq:DEV, pcap_fanout) and "
            "install it privately, never over the system's copy")
    p = sub.add_parser("pcap", help=help, description=help + ": the suite's source package "
                       "from Debian's archive, PFQ's module added by code, built by "
                       "dpkg-buildpackage in a disposable system of the suite.")
    p.set_defaults(handler=cmd_pcap)
    p.add_argument("--suite", metavar="SUITE",
                   help="the Debian suite whose libpcap to build (default: this machine's)")
    p.add_argument("--prefix", metavar="DIR", help="where the library (DIR/lib) and headers "
                   "(DIR/include) go (default: ~/.local/share/pfq-omatic/libpcap/SUITE)")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--deb", action="store_true", help="also make it a Debian package, "
                   "libpcap0.8-pfq, that installs beside the system's libpcap (in "
                   "/usr/lib/x86_64-linux-gnu/pfq-omatic/libpcap), and lint it")
    p.add_argument("--out", metavar="DIR", default="out/pcap",
                   help="where the package goes (default: out/pcap)")
    p.add_argument("--jobs", "-j", type=_jobs, default=None,
                   help="parallel jobs of the build (default: cores)")
    p.add_argument("--json", action="store_true", help="print what was built as JSON")
    help = "run an unmodified libpcap application on the libpcap `pfq-omatic pcap` built"
    p = sub.add_parser("run", help=help, description=help + ", after checking that the "
                       "dynamic loader will load it (no setuid, no file capabilities, "
                       "libpcap.so.0.8 found there).")
    p.set_defaults(handler=cmd_run)
    p.add_argument("--prefix", metavar="DIR", help="the library's folder, as given to "
                   "pfq-omatic pcap (default: this machine's suite's, else the one the "
                   "libpcap0.8-pfq package installed)")
    p.add_argument("argv", nargs="*", metavar="APP", help="the application and its "
                   "arguments, after --")


def _print_lab(report: dict[str, Any], out: TextIO) -> None:
    checks = report["checks"]
    system = f" of the {report['qemu']['system']} system" if report["qemu"].get("system") \
        else ""
    out.write(f"{report['driver']} on {report['kernel']} ({report['nic_model']}, QEMU "
              f"{report['qemu'].get('version') or '?'}{system}, {report['accel']}): booted in "
              f"{report['boot_seconds']} s, guest ran {report['guest_seconds']} s\n")
    for phase in ("pass", "tap", "capture", "reload"):
        c = checks[phase]
        if not c.get("ran"):
            continue
        n, r = c["counters"], c["replies"]
        pcap = f" pcap={c['pcap']['frames']} equal={c['pcap']['equal_to_sent']}" \
            if "pcap" in c else ""
        out.write(f"  {phase:8} sent={c['sent']['frames']} rx={n['rx_packets']} "
                  f"hooks={n['packets']} to_stack={n['to_stack']} captured={n['captured']} "
                  f"arp_replies={r['arp-reply']} echo_replies={r['echo-reply']}{pcap}\n")
    fanout = checks.get("fanout", {})
    if fanout.get("ran"):
        out.write(f"  fanout   sent={fanout['sent']} in {fanout['flows']} flows, "
                  f"pfq-omatic capture --workers {fanout['workers']} --steer hash: files of "
                  f"{'+'.join(map(str, fanout['shares']))} frames, tcpdump read "
                  f"{'+'.join(str(n) for n in fanout['tcpdump_read'])}, flows split "
                  f"{fanout['flows_split']}\n")
        if stages := fanout.get("path", {}).get("stages"):
            out.write("           frames " + " -> ".join(f"{n} {stage}" for stage, n in
                                                        stages.items()) + "\n")
    for failure in report["failures"]:
        out.write(f"  FAIL {failure}\n")
    if report["console_log"]:
        out.write(f"  console log: {report['console_log']}\n")
    out.write(f"  {'ok' if report['ok'] else 'LAB FAILED'}\n")


def _note(text: str) -> None:
    # One write per line: systems are made two at a time, and print() writes the newline
    # apart, so two notes could run into one line.
    sys.stderr.write(f"pfq-omatic: {text}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _include_advice(args: argparse.Namespace) -> Iterator[None]:
    """A package the archive does not serve: when the user named packages (--include),
    theirs are the names to check."""
    from omatic.kernels.system import UnknownPackageError

    try:
        yield
    except UnknownPackageError as err:
        if not args.include:
            raise
        raise UnknownPackageError(err.fields["message"], suite=err.fields["suite"],
                                  advice="check the package names given to --include"
                                  ) from None


def _spec(args: argparse.Namespace) -> Any:
    from omatic.kernels.system import SystemSpec

    return SystemSpec.of(args.suite, args.include or (), args.variant)


def cmd_env_list(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.kernels.system import cached_systems, load_suites

    suites, cached = load_suites(), cached_systems()
    if args.json:
        _print_json({"suites": {n: {"release": s.release, "sources": s.source_lines()}
                                for n, s in sorted(suites.items())},
                     "cached": cached}, out)
        return 0
    for name, suite in sorted(suites.items()):
        out.write(f"{name}\tDebian {suite.release}\t{' | '.join(suite.source_lines())}\n")
    for c in cached:
        packages = ",".join(c["packages"]) or "-"
        out.write(f"cached\t{c['suite']}\t{c['variant']}\t{packages}\t{c['created']}\t"
                  f"{c['bytes'] / 2**20:.0f} MiB\t{c['tarball']}\n")
    return 0


def cmd_env_create(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.kernels.system import ensure_system

    spec = _spec(args)
    if args.dry_run:
        _print_commands([spec.mmdebstrap_argv(Path(f"{args.suite}.tar"))], args.json, out)
        return 0
    with _include_advice(args):
        tarball, made = ensure_system(spec, refresh=args.refresh, note=_note)
    if args.json:
        _print_json({**spec.to_json(), "tarball": str(tarball), "made": made}, out)
    else:
        out.write(f"{tarball}\t{'made' if made else 'cached'}\n")
    return 0


def _binds(specs: list[str] | None, default_target: str | None = None) -> list[Any]:
    from omatic.errors import PathError
    from omatic.kernels.system import Bind

    binds = []
    for spec in specs or ():
        source, _, target = spec.partition(":")
        target = target or default_target or str(Path(source).absolute())
        if not Path(source).is_dir():
            raise PathError("no such folder", path=source)
        if not target.startswith("/"):
            raise UserError(f"{spec}: the path inside the system must be absolute")
        binds.append(Bind(Path(source), target))
    return binds


def cmd_env_run(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.kernels.system import enter_argv, run_command

    argv = args.argv
    if not argv:
        raise UserError("no command to run: pfq-omatic env run SUITE -- CMD...")
    spec = _spec(args)
    binds = _binds(args.bind)
    clones = []
    if args.clone:
        name = Path(args.clone.partition(":")[0]).resolve().name
        clones = _binds([args.clone], f"/root/{name}")
    workdir = args.workdir or (clones[0].target if clones else "/root")
    if args.dry_run:
        tarball = Path(f"{args.suite}.tar")
        _print_commands([spec.mmdebstrap_argv(tarball),
                         enter_argv(tarball, Path("ROOT"), Path("STATUS"), argv, binds, clones,
                                    workdir)], args.json, out)
        return 0
    if args.json:
        raise UserError("env run passes the command's own output through: --json is for "
                        "--dry-run")
    with _include_advice(args):
        run_command(spec, argv, fresh=args.fresh, refresh=args.refresh, binds=binds,
                    clones=clones, workdir=workdir, note=_note)
    return 0


def cmd_env_clean(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.kernels.system import cached_systems, remove_cached, remove_unpacked

    removed = []
    for c in cached_systems():
        remove_cached(Path(c["tarball"]))
        removed.append(c["tarball"])
    removed += [str(folder) for folder in remove_unpacked()]
    if args.json:
        _print_json({"removed": removed}, out)
    else:
        out.writelines(f"removed {path}\n" for path in removed)
    return 0


def _print_commands(commands: Sequence[Sequence[str]], as_json: bool, out: TextIO) -> None:
    """What a --dry-run would run: one shell line each, or JSON (argv lists and lines)."""
    if as_json:
        _print_json({"dry_run": [{"argv": list(c), "line": shlex.join(c)} for c in commands]},
                    out)
    else:
        out.writelines(shlex.join(c) + "\n" for c in commands)


def _add_env(sub: Any) -> None:
    env = sub.add_parser("env", help="pristine Debian systems: list, create, run a command in",
                         description="Pristine Debian systems made by mmdebstrap, cached as "
                                     "tarballs; each run gets a disposable copy.")
    verbs = env.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, handler: Handler, help: str, suite: bool = True
             ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = verbs.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if suite:
            p.add_argument("suite", metavar="SUITE", help="bookworm, bullseye, trixie, sid")
            p.add_argument("--include", action="append", metavar="PKG[,PKG...]",
                           help="packages to install on top of the variant's; repeatable")
            p.add_argument("--variant", default="minbase", choices=("minbase", "buildd"),
                           help="mmdebstrap's variant (default: minbase)")
            p.add_argument("--refresh", action="store_true",
                           help="make the cached system anew, even if it is recent")
            p.add_argument("--dry-run", action="store_true",
                           help="print the commands, run nothing")
        return p

    verb("list", cmd_env_list, "the suites known, and the systems in the cache", suite=False)
    verb("create", cmd_env_create, "make (or find in the cache) a system; print its tarball")
    p = verb("run", cmd_env_run, "run a command in a disposable copy of a system")
    p.add_argument("--fresh", action="store_true",
                   help="make the system for this run alone, outside the cache")
    p.add_argument("--bind", action="append", metavar="DIR[:PATH]",
                   help="bind a host folder at PATH inside (default: the same path)")
    p.add_argument("--clone", metavar="REPO[:PATH]",
                   help="git clone REPO to PATH inside (default: /root/NAME); the command "
                        "starts there")
    p.add_argument("--workdir", metavar="PATH", help="where the command starts (default: "
                                                     "the clone, else /root)")
    p.add_argument("argv", nargs="*", metavar="CMD",
                   help="the command and its arguments, after --")
    verb("clean", cmd_env_clean, "remove every cached system, the kept ones of kernels and "
         "what a killed run left (not while another run is going)", suite=False)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pfq-omatic",
        description="Make PFQ-accelerated NIC drivers: rewrite, build, verify, prove.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--jobs", "-j", type=_jobs, default=None,
                       help="worker processes (default: cores)")
        p.set_defaults(handler=handler)
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        return p

    p = add("scan", cmd_scan, "list every receive entry point site under PATH")
    p.add_argument("path", metavar="PATH", help="a driver tree or one C file")

    p = add("patch", cmd_patch, "write a copy of SRC with every site rewritten into PFQ hooks")
    p.add_argument("src", metavar="SRC", help="the driver tree to read (never written)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the rewritten tree goes")

    p = add("kernels", cmd_kernels, "list the kernels with installed headers")
    p.add_argument("--available", action="store_true",
                   help="every kernel Debian's archive offers (suite, flavor, installed)")
    p.add_argument("--refresh", action="store_true",
                   help="with --available: read the archive's indexes anew")
    _add_env(sub)

    p = add("drivers", cmd_drivers, "list every NIC driver a kernel builds as a module and "
                                    "whose sources call a receive entry point")
    p.add_argument("--kernel", metavar="KVER", help="the kernel (default as for build)")

    p = add("matrix", cmd_matrix, "build and verify (and prove) drivers x kernels, report")
    p.add_argument("--driver", action="append", metavar="DRIVER",
                   help="a driver; repeat (default: every driver of drivers/)")
    p.add_argument("--hooks", action="store_true",
                   help="also prove every PFQ hook on each kernel (`pfq-omatic hooks`)")
    p.add_argument("--drivers", choices=("all",),
                   help="all: every NIC driver each kernel builds (see `pfq-omatic drivers`)")
    p.add_argument("--kernel", action="append", metavar="KVER",
                   help="a kernel, here or in Debian's archive; repeat (default: the series "
                   "each suites/*.toml names, newest amd64, plus cloud and rt of the newest)")
    p.add_argument("--lab", action="store_true",
                   help="prove in QEMU too, each driver that has a QEMU NIC model")
    p.add_argument("--out", default="matrix-out", help="output folder (default: matrix-out)")
    p.add_argument("--known-failures", metavar="FILE",
                   help="TOML [[failure]] tables (driver, kernel, reason): expected, not fatal")
    p.add_argument("--force", action="store_true", help="redo cells even when unchanged")
    p.add_argument("--emit", choices=("github-actions",),
                   help="print a CI workflow running this matrix instead of running it")

    p = add("build", cmd_build, "build and verify an accelerated driver for installed kernels")
    p.add_argument("driver", metavar="DRIVER", help="module name, e.g. e1000e, ixgbe")
    p.add_argument("--kernel", action="append", metavar="KVER",
                   help="release, series (6.1) or build dir; repeat for several "
                        "(default: the running kernel if its headers exist, else the newest)")
    p.add_argument("--out", default="out", metavar="DIR",
                   help="output root: DIR/<kernel>/<driver>/ (default: out)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--kernel-tree", metavar="DIR", help="take the driver from this kernel tree")
    src.add_argument("--source", metavar="DIR", help="an out-of-tree driver directory")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--vanilla", action="store_true",
                   help="build the driver as it is, not rewritten (does it build out of tree?)"
                        "; output: DIR/<kernel>/<driver>.vanilla/")

    p = add("dkms", cmd_dkms, "write a DKMS tree (and with --deb a Debian package) of pfq.ko "
                              "and accelerated drivers, verified before DKMS installs them")
    p.add_argument("drivers", nargs="+", metavar="DRIVER", help="module names, e.g. e1000e")
    p.add_argument("--kernel", action="append", metavar="KVER",
                   help="a kernel whose series the package covers, here or in Debian's "
                        "archive; repeat (default: every kernel with headers here)")
    p.add_argument("--out", default="out/dkms", metavar="DIR",
                   help="where the tree pfq-omatic-VERSION/ (and the .deb) go (default: "
                        "out/dkms)")
    p.add_argument("--deb", action="store_true",
                   help="also build pfq-omatic-dkms_VERSION_all.deb with dh_dkms, and lint it")

    p = add("verify", cmd_verify, "check modules the way the kernel will at load time")
    p.add_argument("kos", nargs="+", metavar="KO", help=".ko, .ko.xz or .ko.zst files")
    p.add_argument("--kernel", metavar="KVER", help="target kernel (default as for build)")
    p.add_argument("--pfq-symvers", metavar="FILE",
                   help="pfq.ko's Module.symvers (default: build or reuse the cached pfq.ko)")
    p.add_argument("--report", metavar="FILE",
                   help="the build's report.json (default: report.json beside the first KO)")
    p.add_argument("--cert", metavar="FILE",
                   help="X.509 certificate (PEM or DER) each module's signature must verify "
                        f"with; an unsigned module then fails (default: {DKMS_CERT} when "
                        "present, which unsigned modules pass)")

    p = add("hooks", cmd_hooks, "prove every PFQ hook in a QEMU guest with the hook test "
                                "module: each entry point in each mode, results in KTAP")
    p.add_argument("--kernel", action="append", metavar="KVER",
                   help="release or series; repeat for several (default as for build)")
    p.add_argument("--out", default="out", metavar="DIR",
                   help="output root: DIR/<kernel>/pfq_hooktest/hooks.json (default: out)")
    p.add_argument("--keep", action="store_true", help="keep the console log on success")
    p.add_argument("--timeout", type=float, default=420.0, metavar="SECONDS",
                   help="seconds before a guest counts as hung (default: 420)")
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                   help="auto: KVM only if a probe boots a kernel with it, else TCG")
    p.add_argument("--fuzz-seed", type=int, default=None, metavar="N",
                   help="the seed of the bad requests at volume (default: a new one, "
                        "printed; a failing run's seed replays it)")
    p.add_argument("--pcap", action=argparse.BooleanOptionalAction, default=True,
                   help="also run Debian's tcpdump in the guest on the libpcap of "
                        "`pfq-omatic pcap`, built first if need be (default: on)")

    p = add("lab", cmd_lab, "boot Debian's kernel in QEMU with pfq.ko and the accelerated "
                            "driver, inject frames and check every PFQ mode")
    p.add_argument("driver", metavar="DRIVER", help="module name, e.g. e1000e, virtio_net")
    p.add_argument("--kernel", action="append", metavar="KVER",
                   help="release, series (6.1) or build dir; repeat for several "
                        "(default as for build)")
    p.add_argument("--nic-model", metavar="MODEL",
                   help="QEMU -device model (default: the driver manifest's nic_model)")
    p.add_argument("--frames", type=_jobs, default=100, metavar="N",
                   help="frames injected per phase (default: 100)")
    p.add_argument("--keep", action="store_true",
                   help="keep the console log and pcaps even when the lab passes")
    p.add_argument("--fanout", action=argparse.BooleanOptionalAction, default=True,
                   help="run pfq-omatic capture with 4 hash-steered workers on the NIC "
                        "(default: on)")
    p.add_argument("--out", default="out", metavar="DIR",
                   help="output root: DIR/<kernel>/<driver>/lab.json (default: out)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="seconds before a guest counts as hung (default: 120)")
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                   help="auto: KVM only if a probe boots a kernel with it, else TCG")
    p.add_argument("--installed", metavar="ROOT",
                   help="boot the pfq.ko and driver DKMS installed in this system "
                        "(ROOT/lib/modules/<kernel>/updates/dkms; / for this machine) "
                        "instead of building them")
    _add_capture(sub)
    _add_pcap(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; returns the exit code."""
    out = out or sys.stdout
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C: guests, namespaces and temporary
    # folders are cleaned up on the way out.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        args = _parse(list(sys.argv[1:] if argv is None else argv))
        code: int = args.handler(args, out)
        # A pipe's stdout is block-buffered: a reader that went is found here, not at the
        # interpreter's last flush, out of this function's reach.
        out.flush()
        return code
    except OmaticError as err:
        print(f"pfq-omatic: error: {err}", file=sys.stderr)
        _record_failure(err)
        return err.exit_code
    except KeyboardInterrupt:
        print("pfq-omatic: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went (`| head`): end quietly, as `ls` does (128 + SIGPIPE), after the
        # cleanups on the way here; stdout goes nowhere so the final flush fails no more.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _record_failure(err: OmaticError) -> None:
    """For a matrix cell: what kind of error ended this command, in the file it names."""
    # Only light imports here: `python3 -m omatic env` runs outside the venv.
    from omatic.errors import FAILURE_ENV, BuildError

    path = os.environ.get(FAILURE_ENV)
    if not path:
        return
    kind = ("user" if isinstance(err, UserError) else
            "build" if isinstance(err, BuildError) else "infra")
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps({"kind": kind, "error": type(err).__name__,
                                          "message": str(err)}))


def cmd_matrix(args: argparse.Namespace, out: TextIO) -> int:
    from omatic.manifests import load_manifests, resolve
    from omatic.matrix.report import emit_github_actions, exit_code
    from omatic.matrix.run import MatrixRun, load_known_failures, run_matrix

    manifests = load_manifests()
    if args.driver and args.drivers:
        raise UserError("--driver and --drivers: give one of them")
    drivers = sorted({resolve(d, manifests)[0] for d in args.driver} if args.driver
                     else manifests)
    if args.emit:
        # The workflow and nothing else: no system made, nothing built, no report.
        workflow = emit_github_actions(_emit_kernels(args.kernel),
                                       [] if args.drivers == "all" else drivers, args.lab,
                                       hooks=args.hooks, all_drivers=args.drivers == "all")
        if args.json:
            _print_json({"workflow": workflow}, out)
        else:
            out.write(workflow)
        return 0
    known = load_known_failures(Path(args.known_failures) if args.known_failures else None)
    kernels = _matrix_kernels(args.kernel)
    per_kernel = None
    if args.drivers == "all":
        from omatic.build.nics import nic_drivers

        per_kernel = {k.release: [d.name for d in nic_drivers(k)] for k in kernels}
        drivers = sorted({d for names in per_kernel.values() for d in names})
    # A driver the lab cannot prove (no_lab) still gets its lab cell: a skip saying why.
    lab = {d for d in drivers if d in manifests
           and (manifests[d].nic_model or manifests[d].no_lab)} if args.lab else set()
    run = MatrixRun(drivers=drivers, kernels=kernels, out_dir=Path(args.out), lab=lab,
                    known=known, per_kernel=per_kernel, hooks=args.hooks,
                    workers=args.jobs or os.cpu_count() or 1, force=args.force,
                    command=shlex.join(["pfq-omatic", "matrix", *sys.argv[2:]]))

    def told(cell: Any, reused: bool) -> None:
        if not args.json:
            flag = " (unchanged)" if reused else ""
            why = f": {cell.reason}" if cell.reason else ""
            out.write(f"{cell.status:5} {cell.driver} on {cell.kernel} "
                      f"({cell.seconds:.0f} s){flag}{why}\n")
            out.flush()

    cells = run_matrix(run, told)
    if args.json:
        _print_json({"cells": [c.to_json() for c in cells]}, out)
    else:
        out.write(f"wrote {Path(args.out) / 'matrix.md'}, matrix.json, junit.xml\n")
    return exit_code(cells)


def _emit_kernels(specs: list[str] | None) -> list[tuple[str, str]]:
    """(release, suite) of the kernels a workflow's jobs run on, as a matrix would choose
    them, read from this machine and the archive's indexes: nothing is made."""
    from omatic.kernels.archive import available_kernels, matrix_kernels, served
    from omatic.kernels.find import find_or_offered

    if not specs:
        return [(k.release, k.suite)
                for k in matrix_kernels(available_kernels(), served, note=_note)]
    return [(k.release, k.suite or "bookworm") for k in find_or_offered(specs)]


def _matrix_kernels(specs: list[str] | None) -> list[Any]:
    """The kernels named (default: suites/*.toml's), in the order given: those here or in
    a kept system as they are, the others in one new system per suite."""
    from omatic.kernels.archive import (
        ArchiveKernel,
        available_kernels,
        matrix_kernels,
        served,
        system_kernels,
    )
    from omatic.kernels.find import find_or_offered

    offered = None
    if not specs:
        offered = available_kernels()
        specs = [k.release for k in matrix_kernels(offered, served, note=_note)]
    found = find_or_offered(specs, offered)
    missing = [k for k in found if isinstance(k, ArchiveKernel)]
    made = iter(system_kernels(missing, note=_note))
    return [next(made) if isinstance(k, ArchiveKernel) else k for k in found]


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; what follows a `--` is the command of `env run`, options and all
    (argparse loses a `--` on its way through subcommands)."""
    tail: list[str] | None = None
    if "--" in argv:
        at = argv.index("--")
        argv, tail = argv[:at], argv[at + 1:]
    args = build_parser().parse_args(argv)
    if tail is not None:
        if not hasattr(args, "argv"):
            raise UserError("'--' is only for the command of 'pfq-omatic env run' and "
                            "'pfq-omatic run'")
        args.argv = [*args.argv, *tail]
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
