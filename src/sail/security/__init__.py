"""Identity: SPIFFE IDs, the mesh CA and join tokens (`docs/security.md`).

* `sail.security.spiffe` - `SpiffeId`, parsed and checked by the SPIFFE ID standard.
* `sail.security.ca` - `CertificateAuthority`: signs workload certificates for SPIFFE
  identities from CSRs, and checks the certificates it issued.
* `sail.security.tokens` - join tokens, which grant a workload its first certificate.
* `sail.security.providers` - gRPC's `file_watcher` certificate provider.
* `sail.security.enroll` - a workload's key and its certificates from the mesh CA.
* `sail.security.workload` - the identity a workload holds, kept current by a thread.

The modules are imported where they are used (`cryptography` is not cheap to import).
"""
