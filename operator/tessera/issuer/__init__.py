"""The issuer service (``tessera issuer``): OIDC discovery, JWKS and a token endpoint over HTTPS."""
