"""Identity: SPIFFE IDs, the mesh CA and join tokens (`docs/security.md`).

* `sail.security.spiffe` - `SpiffeId`, parsed and checked by the SPIFFE ID standard.
* `sail.security.ca` - `CertificateAuthority`: signs workload certificates for SPIFFE
  identities from CSRs, and checks the certificates it issued.
* `sail.security.tokens` - join tokens, which grant a workload its first certificate.
"""

from sail.security.ca import CertificateAuthority
from sail.security.spiffe import SpiffeId

__all__ = ["CertificateAuthority", "SpiffeId"]
