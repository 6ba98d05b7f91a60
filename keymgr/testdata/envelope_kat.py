# Independent computation of the envelope known-answer vectors in src/cipher.rs (Python `cryptography`).
# Run: python3 keymgr/testdata/envelope_kat.py
import hmac, hashlib, base64
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
SALT=b"pgcloak-keymgr hkdf salt v1"
def hkdf(ikm, info):
    prk=hmac.new(SALT, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info+b"\x01", hashlib.sha256).digest()
dek=bytes(range(32)); col=b"public.customers.phone"
def header(mode,kid,ver): return b"\xc1\x0a\x01"+bytes([mode])+kid.to_bytes(4,'big')+ver.to_bytes(4,'big')
def ad(h): return h+len(col).to_bytes(4,'big')+col
enc=hkdf(dek,b"pgcloak column enc key v1"); mac=hkdf(dek,b"pgcloak column mac key v1")
h=header(1,7,3); nonce=bytes(range(0xa0,0xac)); pt=b"555-0100"
r=h+nonce+AESGCM(enc).encrypt(nonce,pt,ad(h)); print("R",r.hex())
h=header(2,7,3); n=hmac.new(mac, ad(h)+pt, hashlib.sha256).digest()[:12]
d=h+n+AESGCM(enc).encrypt(n,pt,ad(h)); print("D",d.hex()); print("A",base64.urlsafe_b64encode(d).rstrip(b"=").decode())
