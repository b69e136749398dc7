"""A module's appended signature, as the kernel reads it at load time.

`sign-file` (and DKMS, which runs it) appends to the module a PKCS#7 SignedData without
content, then a 12-byte `struct module_signature` (id_type 2 = PKCS#7, sig_len big-endian)
and the magic string below. The kernel hashes everything before the signature and checks
it with the public key of a trusted certificate; `modinfo` shows the signer (the issuer's
common name), the key id (the serial number) and the hash. asn1crypto reads the PKCS#7,
cryptography checks the signature: both are imported only when a module is signed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omatic.errors import PathError, UserError

MAGIC = b"~Module signature appended~\n"
#: The certificate of the key DKMS signs modules with (made on its first build).
DKMS_CERT = Path("/var/lib/dkms/mok.pub")
_TRAILER = struct.Struct(">BBBBB3xI")
_PKEY_ID_PKCS7 = 2


class SignatureError(UserError):
    template = "{path}: {message}"


@dataclass(frozen=True)
class ModuleSignature:
    """What modinfo shows of a signature, and what checking it needs."""

    signer: str
    key_id: str
    hash: str
    #: The bytes the signature covers: the module up to the signature.
    content_size: int
    _issuer: Any
    _serial: int
    _signed_attrs: Any
    _signature: bytes

    def to_json(self) -> dict[str, str]:
        return {"signer": self.signer, "key_id": self.key_id, "hash": self.hash}

    def verify(self, content: bytes, cert: Certificate) -> str | None:
        """None when `cert`'s key made this signature over `content`, else why not."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

        if (self._issuer, self._serial) != (cert.issuer_der, cert.serial):
            return (f"signed by another key: {self.signer} key id {self.key_id}; the "
                    f"certificate is {cert.subject} key id {cert.key_id}")
        algorithm = {"sha1": hashes.SHA1(), "sha224": hashes.SHA224(),
                     "sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                     "sha512": hashes.SHA512()}.get(self.hash)
        if algorithm is None:
            return f"hash {self.hash} is not one the kernel signs modules with"
        signed = content
        if self._signed_attrs is not None:
            # The signature is over the attributes; they carry the content's digest.
            digest = hashes.Hash(algorithm)
            digest.update(content)
            want = [a["values"][0].native for a in self._signed_attrs
                    if a["type"].native == "message_digest"]
            if want != [digest.finalize()]:
                return "the module's content does not match its signature's digest"
            signed = self._signed_attrs.untag().dump(force=True)
        key = cert.public_key
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(self._signature, signed, padding.PKCS1v15(), algorithm)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(self._signature, signed, ec.ECDSA(algorithm))
            else:
                return f"the certificate's key ({type(key).__name__}) cannot sign modules"
        except InvalidSignature:
            return ("the signature does not verify over the module's content (altered "
                    "after signing?)")
        return None


@dataclass(frozen=True)
class Certificate:
    """An X.509 certificate a module may be signed for (DKMS's mok.pub, a kernel's key)."""

    path: Path
    subject: str
    key_id: str
    issuer_der: Any
    serial: int
    public_key: Any

    @classmethod
    def load(cls, path: Path) -> Certificate:
        from asn1crypto import x509
        from cryptography import x509 as cx509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            data = path.read_bytes()
        except OSError as err:
            raise PathError(f"cannot read the certificate: {err.strerror}", path=path) from None
        try:
            cert = (cx509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
                    else cx509.load_der_x509_certificate(data))
        except ValueError:
            raise SignatureError("not an X.509 certificate (PEM or DER)", path=path) from None
        parsed = x509.Certificate.load(cert.public_bytes(Encoding.DER))
        return cls(path=path, subject=_common_name(parsed.subject),
                   key_id=_key_id(cert.serial_number), issuer_der=parsed.issuer.dump(),
                   serial=cert.serial_number, public_key=cert.public_key())


def _common_name(name: Any) -> str:
    native = name.native
    return str(native.get("common_name") or name.human_friendly)


def _key_id(serial: int) -> str:
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02X}" for b in raw)


def read_signature(data: bytes, path: Path) -> ModuleSignature | None:
    """The signature appended to a module's bytes, or None when it has none."""
    if not data.endswith(MAGIC):
        return None
    end = len(data) - len(MAGIC) - _TRAILER.size
    if end < 0:
        raise SignatureError("truncated module signature", path=path)
    *_, id_type, _, _, sig_len = _TRAILER.unpack_from(data, end)
    start = end - sig_len
    if id_type != _PKEY_ID_PKCS7 or start < 0:
        raise SignatureError(f"module signature of an unknown kind (id type {id_type}, "
                             f"{sig_len} bytes)", path=path)
    from asn1crypto import cms

    try:
        info = cms.ContentInfo.load(data[start:end])
        signer = info["content"]["signer_infos"][0]
        sid = signer["sid"].chosen
        issuer, serial = sid["issuer"], sid["serial_number"].native
        attrs = signer["signed_attrs"]
        return ModuleSignature(
            signer=_common_name(issuer), key_id=_key_id(serial),
            hash=signer["digest_algorithm"]["algorithm"].native, content_size=start,
            _issuer=issuer.dump(), _serial=serial,
            _signed_attrs=attrs if len(attrs) else None,
            _signature=signer["signature"].native)
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise SignatureError(f"unreadable PKCS#7 module signature: {err}", path=path) from None
