//! A CRI `AuthConfig` (what kubelet puts in `PullImageRequest.auth` from a pod's
//! imagePullSecret) as a registry [`Credential`]: a registry token is sent as is, an
//! identity token is exchanged at the token service, a user name and password (or `auth`,
//! base64 `user:password`) is Basic or sent to the token service. And back
//! ([`auth_config_of`]): what the credential provider answered, passed on to containerd.

use base64::Engine as _;
use k8s_cri::v1::AuthConfig;
use veil_registry::Credential;

/// The credential `auth` holds, `None` when it is empty (anonymous); `Err` names what is
/// wrong, never the secret.
pub fn credential_of(auth: &AuthConfig) -> Result<Option<Credential>, String> {
    if !auth.registry_token.is_empty() {
        return Ok(Some(Credential::RegistryToken(auth.registry_token.clone())));
    }
    if !auth.identity_token.is_empty() {
        return Ok(Some(Credential::IdentityToken {
            username: auth.username.clone(),
            token: auth.identity_token.clone(),
        }));
    }
    if !auth.username.is_empty() || !auth.password.is_empty() {
        return Ok(Some(Credential::Basic {
            username: auth.username.clone(),
            password: auth.password.clone(),
        }));
    }
    if !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .map_err(|_| "`auth` is not base64".to_string())?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| "`auth` is not UTF-8 once decoded".to_string())?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| "`auth` is not user:password".to_string())?;
        return Ok(Some(Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    Ok(None)
}

/// The `AuthConfig` that carries `credential` (the inverse of [`credential_of`]).
pub fn auth_config_of(credential: &Credential) -> AuthConfig {
    match credential {
        Credential::Basic { username, password } => AuthConfig {
            username: username.clone(),
            password: password.clone(),
            ..Default::default()
        },
        Credential::IdentityToken { username, token } => AuthConfig {
            username: username.clone(),
            identity_token: token.clone(),
            ..Default::default()
        },
        Credential::RegistryToken(token) => AuthConfig {
            registry_token: token.clone(),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_of_round_trips() {
        for credential in [
            Credential::Basic {
                username: "u".into(),
                password: "p".into(),
            },
            Credential::IdentityToken {
                username: "u".into(),
                token: "t".into(),
            },
            Credential::RegistryToken("r".into()),
        ] {
            let auth = auth_config_of(&credential);
            assert_eq!(credential_of(&auth).unwrap(), Some(credential));
        }
    }

    #[test]
    fn each_form_becomes_its_credential() {
        let basic = AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(
            credential_of(&basic).unwrap(),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        let auth = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:s3:cret"),
            ..Default::default()
        };
        assert_eq!(
            credential_of(&auth).unwrap(),
            Some(Credential::Basic {
                username: "alice".into(),
                password: "s3:cret".into()
            })
        );
        let token = AuthConfig {
            registry_token: "t".into(),
            username: "ignored".into(),
            ..Default::default()
        };
        assert_eq!(
            credential_of(&token).unwrap(),
            Some(Credential::RegistryToken("t".into()))
        );
        assert_eq!(credential_of(&AuthConfig::default()).unwrap(), None);
    }

    #[test]
    fn bad_auth_is_named_without_the_secret() {
        let bad = AuthConfig {
            auth: "%%%not-base64".into(),
            ..Default::default()
        };
        let err = credential_of(&bad).unwrap_err();
        assert!(err.contains("not base64") && !err.contains("%%%"), "{err}");
        let no_colon = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("justasecret"),
            ..Default::default()
        };
        let err = credential_of(&no_colon).unwrap_err();
        assert!(!err.contains("justasecret"), "{err}");
    }
}
