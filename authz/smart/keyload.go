package smart

import (
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// LoadPrivateKey reads a private key for private_key_jwt client assertions
// the way the private_key option does: an inline JWK or PEM, or a path to
// a file holding a JWK, a JWKS (its first private key) or a PEM. algName
// ("" to choose from the key) and kid ("" to keep the key's) as
// private_key_alg and private_key_id. Other authorizers that sign client
// assertions at the EHR (authz/dual) share it.
func LoadPrivateKey(src, algName, kid string) (jwk.Key, jwa.SignatureAlgorithm, error) {
	k, err := loadPrivateKey(src, algName, kid)
	if err != nil {
		return nil, "", err
	}
	return k.key, k.alg, nil
}
