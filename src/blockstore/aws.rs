//! The standard AWS setup for `s3://` stores: the credential chain every
//! AWS tool uses (aws-config's default chain: the `AWS_*` variables,
//! `AWS_PROFILE` with `~/.aws/credentials` and `~/.aws/config` including
//! SSO and `credential_process`, web identity, the ECS container and EC2
//! instance providers), and the profile's `region` and `endpoint_url`.
//!
//! `object_store` reads the variables, web identity and the container
//! and instance providers itself, but no profile files. So when no
//! access key is configured (neither `AWS_ACCESS_KEY_ID` nor the
//! `access_key_id` store option), credentials come from aws-config's
//! chain through [`ChainProvider`]; keys given explicitly are used as
//! before. Options and variables still win over the profile for region
//! and endpoint.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use object_store::CredentialProvider;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use tokio::sync::{Mutex, OnceCell};

/// How long before a temporary credential's expiry it is refreshed.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// What a user with no credentials anywhere is told to set.
const NO_CREDENTIALS_HINT: &str = "no AWS credentials found: set AWS_ACCESS_KEY_ID and \
AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws/credentials or ~/.aws/config \
(or --store-option aws_access_key_id=... --store-option aws_secret_access_key=...); on EC2 or ECS attach a role";

/// `b` with aws-config's credential chain, region and endpoint wherever
/// `b` (built from the environment and the store options) has none.
///
/// The profile files are read here, on a short-lived thread (this runs
/// inside or outside a Tokio runtime); credentials are fetched at the
/// first request, then cached until shortly before they expire.
pub(super) fn standard_setup(mut b: AmazonS3Builder) -> AmazonS3Builder {
    let has = |b: &AmazonS3Builder, k| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
    if b.get_config_value(&AmazonS3ConfigKey::SkipSignature)
        .as_deref()
        == Some("true")
    {
        return b;
    }
    let (need_region, need_endpoint) = (
        !has(&b, AmazonS3ConfigKey::Region),
        !has(&b, AmazonS3ConfigKey::Endpoint),
    );
    if need_region || need_endpoint {
        let (region, endpoint) = profile_region_and_endpoint();
        if need_region && let Some(r) = region {
            b = b.with_region(r);
        }
        if need_endpoint && let Some(e) = endpoint {
            b = b.with_endpoint(e);
        }
    }
    if has(&b, AmazonS3ConfigKey::AccessKeyId) {
        return b;
    }
    let region = b
        .get_config_value(&AmazonS3ConfigKey::Region)
        .unwrap_or_else(|| "us-east-1".to_string());
    b.with_credentials(Arc::new(ChainProvider::new(region)))
}

/// The region and endpoint URL of the active profile (`AWS_PROFILE`, or
/// `default`), or of `AWS_ENDPOINT_URL*`; files only, no network.
fn profile_region_and_endpoint() -> (Option<String>, Option<String>) {
    let load = || -> Option<(Option<String>, Option<String>)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            use aws_config::meta::region::ProvideRegion;
            let region = aws_config::profile::ProfileFileRegionProvider::new()
                .region()
                .await;
            // An explicit region keeps `load` from asking the instance
            // metadata service for one.
            let config = aws_config::defaults(BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .load()
                .await;
            Some((
                region.map(|r| r.to_string()),
                config.endpoint_url().map(str::to_string),
            ))
        })
    };
    std::thread::spawn(load)
        .join()
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// An `object_store` credential provider over aws-config's default chain,
/// with a cache: a credential is reused until [`REFRESH_BEFORE_EXPIRY`]
/// before its expiry (forever if it has none).
#[derive(Debug)]
pub struct ChainProvider {
    /// The region for the chain's own calls (STS, SSO): the store's.
    region: String,
    chain: OnceCell<Option<SharedCredentialsProvider>>,
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl ChainProvider {
    /// A provider whose chain calls AWS services in `region`; nothing is
    /// read until the first credential is asked for.
    pub fn new(region: String) -> ChainProvider {
        ChainProvider {
            region,
            chain: OnceCell::new(),
            cached: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl CredentialProvider for ChainProvider {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((c, expiry)) = cached.as_ref()
            && expiry.is_none_or(|e| SystemTime::now() + REFRESH_BEFORE_EXPIRY < e)
        {
            return Ok(c.clone());
        }
        let chain = self
            .chain
            .get_or_init(|| async {
                aws_config::defaults(BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.region.clone()))
                    .load()
                    .await
                    .credentials_provider()
            })
            .await
            .as_ref()
            .ok_or_else(|| object_store::Error::Generic {
                store: "S3",
                source: NO_CREDENTIALS_HINT.into(),
            })?;
        let c = chain
            .provide_credentials()
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: describe(e).into(),
            })?;
        let credential = Arc::new(AwsCredential {
            key_id: c.access_key_id().to_string(),
            secret_key: c.secret_access_key().to_string(),
            token: c.session_token().map(str::to_string),
        });
        *cached = Some((credential.clone(), c.expiry()));
        Ok(credential)
    }
}

/// One line for a failed credential lookup: the hint when nothing
/// provided credentials, else the provider's error and its cause.
fn describe(e: CredentialsError) -> String {
    match e {
        CredentialsError::CredentialsNotLoaded(_) => NO_CREDENTIALS_HINT.to_string(),
        other => {
            let mut s = other.to_string();
            let mut cause = std::error::Error::source(&other);
            while let Some(c) = cause {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cause = c.source();
            }
            s
        }
    }
}
