"""Check built kernel modules the way the target kernel will check them at load time.

A rewritten driver that builds can still be refused by `insmod`: a vermagic from other
headers, a hook CRC that is not pfq.ko's, a symbol nothing exports, a GPL-only hook used
by a non-GPL module, a `struct module` of another size. Each of those is found here from
the files alone (read with omatic.verify.modfile, no modinfo/readelf subprocess), and each
failure quotes what the kernel would print (kernel/module/main.c and version.c of 6.1
and 6.12), so a report reads like the dmesg the user would otherwise meet in the lab.

Checks, per module: "vermagic", "license", "depends", "hooks", "entry-points",
"symbols", "this_module"; each "pass", "fail" or "skipped" with details.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from omatic.errors import UserError
from omatic.kernels.kernel import Kernel
from omatic.kernels.symvers import read_symvers
from omatic.rules import load_rules
from omatic.verify.modfile import KernelModule, find_module

if TYPE_CHECKING:
    from omatic.verify.signature import Certificate

Status = Literal["pass", "fail", "skipped"]

#: Licenses the kernel treats as GPL-compatible (include/linux/license.h); only these
#: may use EXPORT_SYMBOL_GPL symbols, and every PFQ hook is one.
GPL_COMPATIBLE = frozenset({"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL",
                            "Dual MIT/GPL", "Dual MPL/GPL"})

#: In-tree modules tried first as the reference for vermagic and sizeof(struct module):
#: common on every x86_64 distribution kernel. Any other module is the fallback.
_REFERENCE_CANDIDATES = ("drivers/net/dummy.ko", "drivers/net/ethernet/intel/e1000e/e1000e.ko",
                         "fs/fat/fat.ko")
_THIS_MODULE = ".gnu.linkonce.this_module"
#: Every module's __versions carries this vmlinux export; its CRC covers struct module
#: and friends (kernel/module/version.c: check_modstruct_version).
_MODULE_LAYOUT = "module_layout"


@dataclass(frozen=True)
class Check:
    """One named check of one module."""

    #: "vermagic", "license", "depends", "hooks", "entry-points", "symbols", "this_module",
    #: "signature".
    name: str
    #: "pass", "fail" or "skipped".
    status: Status
    #: What was compared; for a failure, first the kernel's own words at load time.
    details: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "details": list(self.details)}


@dataclass
class ModuleReport:
    """The checks of one module file."""

    path: Path
    checks: list[Check]
    #: The module's name as the kernel prints it (modinfo "name", else the file stem).
    name: str = ""

    @property
    def ok(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    def check(self, name: str) -> Check:
        """The check called `name` (KeyError if there is none)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "ok": self.ok,
                "checks": [check.to_json() for check in self.checks]}


@dataclass
class VerifyReport:
    """The checks of every module of one verify run, against one kernel."""

    modules: list[ModuleReport]
    #: Release of the kernel checked against.
    kernel: str = ""

    @property
    def ok(self) -> bool:
        return all(module.ok for module in self.modules)

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "ok": self.ok,
                "modules": [module.to_json() for module in self.modules]}

    def lines(self) -> list[str]:
        """One line per check: `<file>: <check>: <status>[: details; ...]`."""
        return report_lines(self.to_json())


def report_lines(report: Mapping[str, Any]) -> list[str]:
    """The lines of VerifyReport.lines() from its JSON form (as a build's report keeps it)."""
    return [f"{Path(module['path']).name}: {check['name']}: {check['status']}"
            + (f": {'; '.join(check['details'])}" if check["details"] else "")
            for module in report["modules"] for check in module["checks"]]


@dataclass(frozen=True)
class _Provider:
    """Who exports a symbol, and how the kernel will see it."""

    #: Module name ("pfq", "ptp"), or "" for vmlinux.
    module: str
    crc: int | None
    gpl: bool
    namespace: str = ""


def _module_name(path_or_name: str) -> str:
    """"drivers/ptp/ptp" -> "ptp"; "vmlinux" -> "" (built in, nothing to depend on)."""
    base = path_or_name.rsplit("/", 1)[-1]
    return "" if base == "vmlinux" else base.replace("-", "_")


def _symvers_providers(path: Path) -> dict[str, _Provider]:
    return {name: _Provider(_module_name(e.module), e.crc, e.export == "EXPORT_SYMBOL_GPL",
                            e.namespace) for name, e in read_symvers(path).items()}


def _ko_providers(module: KernelModule) -> dict[str, _Provider]:
    name = _display_name(module)
    return {sym: _Provider(name.replace("-", "_"), e.crc, e.gpl)
            for sym, e in module.exports().items()}


def _display_name(module: KernelModule) -> str:
    names = module.modinfo().get("name")
    if names and names[0]:
        return names[0]
    return module.path.name.split(".ko", 1)[0]


def _is_ko(path: Path) -> bool:
    return ".ko" in path.name and not path.name.endswith(".symvers")


@functools.lru_cache(maxsize=8)
def reference_module(modules_dir: Path) -> Path | None:
    """One in-tree module of an installed kernel image, or None when there is none.

    Its vermagic is the one the running kernel compares with, and its this_module
    section is sizeof(struct module) of that build: facts headers alone do not give.
    """
    for candidate in _REFERENCE_CANDIDATES:
        path = find_module(modules_dir, candidate)
        if path is not None:
            return path
    return next(modules_dir.rglob("*.ko*"), None)


def verify_modules(kos: Sequence[Path], kernel: Kernel, pfq_symvers: Path, *,
                   rewrite_report: Mapping[str, Any] | None = None,
                   extra_symvers: Sequence[Path] = (),
                   reference: Path | None = None,
                   cert: Path | None = None, cert_required: bool = False) -> VerifyReport:
    """Check each module of `kos` against `kernel`, with pfq.ko's `pfq_symvers`.

    `rewrite_report` is the rewriter's JSON ("sites" with "callee", "hook", "action"):
    it says which hooks the module must import and which entry points must be gone;
    without it the hooks are the imported pfq_ symbols the rules name, and the
    entry-points check is skipped. `extra_symvers` are Module.symvers or .ko files of
    modules the drivers depend on; the modules of `kos` also resolve each other's
    symbols. `reference` overrides the in-tree module used for vermagic and struct
    module size. `cert` is a certificate each module's signature must verify with; an
    unsigned module fails only when `cert_required`. Raises PathError for a missing file,
    BuildError for one that is not a module.
    """
    loaded = [KernelModule(Path(ko)) for ko in kos]
    pfq_exports = _symvers_providers(pfq_symvers)
    providers = {**_symvers_providers(kernel.symvers), **pfq_exports}
    for extra in extra_symvers:
        providers.update(_ko_providers(KernelModule(extra)) if _is_ko(extra)
                         else _symvers_providers(extra))
    siblings = [_ko_providers(module) for module in loaded]
    if reference is None and kernel.modules_dir is not None:
        reference = reference_module(kernel.modules_dir)
    ref = KernelModule(reference) if reference is not None else None
    modversions = kernel.config().get("CONFIG_MODVERSIONS") == "y"
    rewritten_to, fully_rewritten = _from_report(rewrite_report)
    # A driver split into modules: which module imports which hook, the report (per source
    # file) cannot say. A rewritten site may sit in code the kernel's config compiles out
    # (tulip's netif_rx under CONFIG_TULIP_NAPI's #else): that hook is then not imported,
    # which is no defect as long as the driver imports at least one hook.
    imported = set().union(*(m.undefined() for m in loaded))
    unused = sorted((rewritten_to or set()) - imported)
    none_imported = bool(rewritten_to) and not (rewritten_to or set()) & imported
    symbols = {callee: kernel.callee_symbols(callee) for callee in fully_rewritten or ()}
    certificate = None
    if cert is not None:
        from omatic.verify.signature import Certificate

        certificate = Certificate.load(cert)
    reports = []
    for index, module in enumerate(loaded):
        visible = dict(providers)
        for other, exports in enumerate(siblings):
            if other != index:
                visible.update(exports)
        ctx = _Context(module, _display_name(module), visible, pfq_exports, modversions)
        used = {sym for sym in ctx.undefined
                if sym in _rule_hooks() or sym in (rewritten_to or ())}
        reports.append(ModuleReport(path=module.path, name=ctx.name, checks=[
            _check_vermagic(ctx, kernel, ref),
            _check_license(ctx),
            _check_depends(ctx, used),
            _check_hooks(ctx, used, unused, none_imported, [m.path.name for m in loaded]),
            _check_entry_points(ctx, fully_rewritten, symbols),
            _check_symbols(ctx),
            _check_this_module(ctx, kernel, ref),
            _check_signature(ctx, certificate, cert_required),
        ]))
    return VerifyReport(modules=reports, kernel=kernel.release)


def _from_report(report: Mapping[str, Any] | None
                 ) -> tuple[set[str] | None, dict[str, tuple[str, int]] | None]:
    """(hooks rewritten in, {callee: (hook, sites)} for callees with every site rewritten)."""
    if report is None:
        return None, None
    sites = report.get("sites")
    if not isinstance(sites, list) or not all(isinstance(s, Mapping) for s in sites):
        raise UserError("the rewrite report has no 'sites' list (expected the rewriter's "
                        "omatic-report.json)")
    try:
        hooks = {str(s["hook"]) for s in sites if s["action"] == "rewrite"}
        by_callee: dict[str, list[Mapping[str, Any]]] = {}
        for site in sites:
            by_callee.setdefault(str(site["callee"]), []).append(site)
    except KeyError as err:
        raise UserError(f"a site of the rewrite report has no {err} key") from None
    gone = {callee: (str(group[0]["hook"]), len(group)) for callee, group in by_callee.items()
            if all(s["action"] == "rewrite" for s in group)}
    return hooks, gone


@functools.cache
def _rule_hooks() -> frozenset[str]:
    return frozenset(rule.hook for rule in load_rules())


class _Context:
    """One module being checked, what it says of itself, and every export it can
    resolve against (read once, used by every check)."""

    def __init__(self, module: KernelModule, name: str, providers: dict[str, _Provider],
                 pfq_exports: dict[str, _Provider], modversions: bool) -> None:
        self.module = module
        self.name = name
        self.providers = providers
        self.pfq_exports = pfq_exports
        #: CONFIG_MODVERSIONS of the target kernel: CRCs are compared only then.
        self.modversions = modversions
        self.info = module.modinfo()
        self.undefined = module.undefined()
        self.versions = module.versions()

    @property
    def license(self) -> str | None:
        values = self.info.get("license")
        return values[0] if values else None

    def crc_problem(self, symbol: str, provider: _Provider) -> str | None:
        """The kernel's complaint about `symbol`'s CRC, or None when it accepts it."""
        if not self.modversions or provider.crc is None:
            return None
        if symbol not in self.versions:
            return f"{self.name}: no symbol version for {symbol}"
        if self.versions[symbol] != provider.crc:
            return (f"{self.name}: disagrees about version of symbol {symbol} "
                    f"(module {self.versions[symbol]:#010x}, export {provider.crc:#010x})")
        return None


def _check(name: str, problems: Sequence[str], passed: Iterable[str]) -> Check:
    if problems:
        return Check(name, "fail", tuple(problems))
    return Check(name, "pass", tuple(passed))


def _check_vermagic(ctx: _Context, kernel: Kernel, ref: KernelModule | None) -> Check:
    """The whole vermagic must be the kernel's. Stricter than the kernel, which skips the
    release part when the module has __versions (same_magic): a module for another
    release of the same flags would load, but it was built against other headers."""
    computed = kernel.vermagic()
    notes = [f"computed from {kernel.build_dir}/.config: '{computed}'"]
    expected = computed
    if ref is not None:
        in_tree = (ref.modinfo().get("vermagic") or [""])[0]
        notes.append(f"in-tree {ref.path.name}: '{in_tree}'")
        if in_tree and in_tree != computed:
            # The running kernel compares with its own string, which in-tree modules carry.
            notes.append("the headers' vermagic differs from the installed image's; "
                         "using the image's")
            expected = in_tree
    actual = ctx.info.get("vermagic")
    if not actual:
        missing = (f"{ctx.name}: no vermagic in .modinfo; the kernel refuses it unless "
                   "loaded with --force")
        return Check("vermagic", "fail", (missing, *notes))
    if actual[0] != expected:
        return Check("vermagic", "fail",
                     (f"{ctx.name}: version magic '{actual[0]}' should be '{expected}'", *notes))
    return Check("vermagic", "pass", (f"'{actual[0]}'", *notes[1:]))


def _gpl_only_used(ctx: _Context) -> list[str]:
    return sorted(sym for sym in ctx.undefined
                  if (p := ctx.providers.get(sym)) is not None and p.gpl)


def _check_license(ctx: _Context) -> Check:
    lic = ctx.license
    if lic in GPL_COMPATIBLE:
        return Check("license", "pass", (f"'{lic}' is GPL-compatible",))
    shown = "unspecified" if lic is None else lic
    details = [f"{ctx.name}: module license '{shown}' taints kernel."]
    if gpl := _gpl_only_used(ctx):
        details.append(f"GPL-only exports it uses cannot resolve: {', '.join(gpl)}")
    return Check("license", "fail", tuple(details))


def _check_depends(ctx: _Context, hooks: set[str]) -> Check:
    listed = {d.replace("-", "_") for value in ctx.info.get("depends", [])
              for d in value.split(",") if d}
    needed: dict[str, str] = {}  # module -> first symbol needing it
    if hooks:
        needed["pfq"] = min(hooks)
    for sym in sorted(ctx.undefined):
        provider = ctx.providers.get(sym)
        if provider is not None and provider.module and provider.module != ctx.name:
            needed.setdefault(provider.module, sym)
    problems = [f"depends does not name {mod}: modprobe would not load it first and the "
                f"kernel would print '{ctx.name}: Unknown symbol {sym} (err -2)'"
                for mod, sym in sorted(needed.items()) if mod not in listed]
    return _check("depends", problems, [f"depends={','.join(sorted(listed))}"])


def _check_hooks(ctx: _Context, hooks: set[str], unused: Sequence[str], none_imported: bool,
                 files: Sequence[str]) -> Check:
    """`hooks` (the PFQ hooks this module imports) resolve in pfq.ko with its CRCs. A
    driver whose sites were rewritten must import at least one hook (`none_imported` is a
    failure); `unused` hooks (rewritten in code the config compiles out) are only named."""
    problems = []
    if none_imported:
        problems.append(f"{' and '.join(files)} import{'s' if len(files) == 1 else ''} no PFQ "
                        f"hook, though call sites were rewritten to {', '.join(unused)}: the "
                        "rewritten code is not compiled in, and nothing reaches PFQ")
    if not hooks and not problems:
        return Check("hooks", "skipped", ("the module uses no PFQ hook",))
    for hook in sorted(hooks):
        provider = ctx.pfq_exports.get(hook)
        if provider is None:
            problems.append(f"{ctx.name}: Unknown symbol {hook} (err -2): pfq.ko's "
                            "Module.symvers does not export it")
        elif problem := ctx.crc_problem(hook, provider):
            problems.append(problem)
    compiled_out = [f"{h}: rewritten, in code this kernel's config compiles out"
                    for h in unused]
    return _check("hooks", problems, [f"{h} {ctx.versions.get(h, 0):#010x}"
                                      for h in sorted(hooks)] + compiled_out)


def _check_entry_points(ctx: _Context, gone: dict[str, tuple[str, int]] | None,
                        symbols: Mapping[str, Sequence[str]]) -> Check:
    """Every callee whose sites were all rewritten is gone from the module's imports, as
    the symbols it resolves to on this kernel (gro_receive_skb for an inline
    napi_gro_receive)."""
    if gone is None:
        return Check("entry-points", "skipped", ("no rewrite report",))

    def named(callee: str) -> str:
        syms = [s for s in symbols.get(callee, (callee,)) if s != callee]
        return f"{callee} (as {', '.join(syms)})" if syms else callee

    problems = [f"{named(callee)} is still referenced though all {sites} of its sites were "
                f"rewritten to {hook}"
                for callee, (hook, sites) in sorted(gone.items())
                if {callee, *symbols.get(callee, ())} & ctx.undefined]
    listed = ", ".join(named(c) for c in sorted(gone))
    return _check("entry-points", problems,
                  [f"gone: {listed or '(no entry point fully rewritten)'}"])


def _check_symbols(ctx: _Context) -> Check:
    problems: list[str] = []
    gpl_ok = ctx.license in GPL_COMPATIBLE
    imports = set(ctx.info.get("import_ns", []))
    weak = ctx.module.weak_undefined()
    for sym in sorted(ctx.undefined):
        provider = ctx.providers.get(sym)
        if provider is None:
            if sym not in weak:
                problems.append(f"{ctx.name}: Unknown symbol {sym} (err -2)")
            continue
        if provider.gpl and not gpl_ok:
            problems.append(f"{ctx.name}: Unknown symbol {sym} (err -2): EXPORT_SYMBOL_GPL, "
                            f"and license '{ctx.license}' is not GPL-compatible")
            continue
        if provider.namespace and provider.namespace not in imports:
            problems.append(f"{ctx.name}: module uses symbol ({sym}) from namespace "
                            f"{provider.namespace}, but does not import it.")
        if problem := ctx.crc_problem(sym, provider):
            problems.append(problem)
    layout = ctx.providers.get(_MODULE_LAYOUT)
    if layout is not None and _MODULE_LAYOUT in ctx.versions and (
            problem := ctx.crc_problem(_MODULE_LAYOUT, layout)):
        problems.append(problem)
    return _check("symbols", problems,
                  [f"{len(ctx.undefined)} undefined symbols resolve"
                   + (" with matching CRCs" if ctx.modversions else "")])


def _check_signature(ctx: _Context, cert: Certificate | None, required: bool) -> Check:
    from omatic.verify.signature import read_signature

    signature = read_signature(ctx.module.data, ctx.module.path)
    if signature is None:
        if cert is not None and required:
            return Check("signature", "fail", (
                (f"module {ctx.name}: Loading of unsigned module is rejected (where "
                 "signatures are enforced: Secure Boot, module.sig_enforce)"),
                f"not signed; expected a signature of {cert.subject} ({cert.path})"))
        return Check("signature", "pass", ("not signed",))
    said = f"signer {signature.signer!r}, key id {signature.key_id}, {signature.hash}"
    if cert is None:
        return Check("signature", "pass", (said, "no certificate to check it with (--cert)"))
    problem = signature.verify(ctx.module.data[:signature.content_size], cert)
    if problem is None:
        return Check("signature", "pass", (said, f"verifies with {cert.path}"))
    kernel_says = ("Loading of module with unavailable key is rejected"
                   if problem.startswith("signed by another key")
                   else "Key was rejected by service")
    return Check("signature", "fail", (f"module {ctx.name}: {kernel_says}", said, problem))


def _check_this_module(ctx: _Context, kernel: Kernel, ref: KernelModule | None) -> Check:
    if ref is None:
        reason = (f"the modules of {kernel.release} are not installed: no in-tree module "
                  "to learn sizeof(struct module) from")
        return Check("this_module", "skipped", (reason,))
    want = ref.section_size(_THIS_MODULE)
    have = ctx.module.section_size(_THIS_MODULE)
    if want is None:
        return Check("this_module", "skipped", (f"{ref.path} has no {_THIS_MODULE}",))
    if have is None:
        return Check("this_module", "fail", (
            f"module {ctx.name}: Exactly one {_THIS_MODULE} section must exist.",))
    if have != want:
        kernel_says = (f"module {ctx.name}: {_THIS_MODULE} section size must match the "
                       "kernel's built struct module size at run time")
        sizes = (f"{have} bytes; struct module of {kernel.release} is {want} (from "
                 f"{ref.path.name}); 6.1 has no such check: there only the CRC of "
                 "module_layout guards struct module")
        return Check("this_module", "fail", (kernel_says, sizes))
    return Check("this_module", "pass", (f"{have} bytes, as {ref.path.name}",))
