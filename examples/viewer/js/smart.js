// A small SMART App Launch client: standalone (or EHR) launch with the
// authorization code flow and PKCE S256, for a public client.
//
//  1. GET {iss}/.well-known/smart-configuration
//  2. redirect to authorization_endpoint with code_challenge
//  3. back here with ?code&state: POST token_endpoint with code_verifier
//  4. the token response names the patient; the imaging server is the
//     EHR's associated_endpoints entry with capability smart-imaging-access
//     (or the configured one), used with the same access token...
//  5. ...unless the imaging server's own smart-configuration names the
//     capability smart-imaging-access-dual-launch: then a second launch
//     (dual launch) against the imaging server's authorization endpoints,
//     again with PKCE S256 and state, gets the token for search and WADO.

import { getJSON, request, ViewerError } from './http.js';

const pendingKey = 'sia-viewer.pending';
const sessionKey = 'sia-viewer.session';

/** The scope a standalone launch asks for when none is configured. */
export const defaultScope = 'launch/patient openid fhirUser patient/Patient.rs patient/ImagingStudy.rs';

/** The scope of the second launch, at the imaging server, when none is configured. */
export const defaultImagingScope = 'launch/patient patient/ImagingStudy.rs';

/** The capability of an imaging server that issues its own tokens (dual launch). */
export const dualLaunchCapability = 'smart-imaging-access-dual-launch';

/**
 * @typedef {object} SmartEntry a SMART server the user can connect to
 * @property {string} iss the EHR's FHIR base URL
 * @property {string} clientId
 * @property {string} [scope]
 * @property {string} [imaging] imaging FHIR base to use when the EHR advertises none
 * @property {string} [launch] EHR launch context (EHR launch only)
 * @property {string} [imagingClientId] client id at the imaging server for a dual launch (default: clientId)
 * @property {string} [imagingScope] scope of the dual launch (default: defaultImagingScope)
 *
 * @typedef {object} Session a completed launch
 * @property {string} label
 * @property {string} iss
 * @property {string} imaging imaging FHIR base URL
 * @property {string} accessToken the EHR's access token (Patient read)
 * @property {string} [idToken] the EHR's id_token, if any (login_hint of a dual launch)
 * @property {string} [imagingToken] the imaging server's own token (dual launch)
 * @property {boolean} [imagingChecked] the imaging server's mode is known
 * @property {string} patient patient id in context
 * @property {number} expiresAt ms since the epoch (0: unknown)
 * @property {SmartEntry} entry the entry launched
 */

function base64url(bytes) {
	let s = '';
	for (const b of bytes) s += String.fromCharCode(b);
	return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function randomString(n) {
	return base64url(crypto.getRandomValues(new Uint8Array(n)));
}

/** The PKCE S256 challenge of a verifier. */
export async function challengeOf(verifier) {
	if (!crypto.subtle) {
		throw new ViewerError('SMART login needs a secure page (https, or http://localhost) for PKCE.');
	}
	const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
	return base64url(new Uint8Array(digest));
}

/** Fetches the SMART configuration of a FHIR server. */
export async function discover(iss, what = 'reading the SMART configuration of the EHR') {
	const conf = await getJSON(`${iss.replace(/\/+$/, '')}/.well-known/smart-configuration`, { what });
	if (!conf.authorization_endpoint || !conf.token_endpoint) {
		throw new ViewerError(`${iss} has no authorization_endpoint or token_endpoint in its SMART configuration.`);
	}
	return conf;
}

/** This page's address without query, the OAuth redirect_uri. */
export function redirectURI() {
	return `${location.origin}${location.pathname}`;
}

/**
 * Starts the launch: leaves the page for the EHR's authorize endpoint.
 * @param {SmartEntry & {label: string}} entry
 */
export async function authorize(entry) {
	const conf = await discover(entry.iss);
	const methods = conf.code_challenge_methods_supported;
	if (Array.isArray(methods) && !methods.includes('S256')) {
		throw new ViewerError('The EHR does not support PKCE with S256; this viewer requires it.');
	}
	const verifier = randomString(48);
	const state = randomString(16);
	const scope = entry.scope || (entry.launch ? defaultScope.replace('launch/patient', 'launch') : defaultScope);
	sessionStorage.setItem(pendingKey, JSON.stringify({
		kind: 'ehr', state, verifier, entry, tokenEndpoint: conf.token_endpoint,
		associated: conf.associated_endpoints || [], redirectURI: redirectURI(),
	}));
	const q = new URLSearchParams({
		response_type: 'code',
		client_id: entry.clientId,
		redirect_uri: redirectURI(),
		scope,
		state,
		aud: entry.iss,
		code_challenge: await challengeOf(verifier),
		code_challenge_method: 'S256',
	});
	if (entry.launch) q.set('launch', entry.launch);
	const sep = conf.authorization_endpoint.includes('?') ? '&' : '?';
	location.assign(`${conf.authorization_endpoint}${sep}${q}`);
}

/** Picks the imaging server the EHR advertises for smart-imaging-access (or its dual launch). */
export function imagingEndpoint(associated, fallback) {
	for (const a of associated || []) {
		if (a && a.url && Array.isArray(a.capabilities) &&
			(a.capabilities.includes('smart-imaging-access') || a.capabilities.includes(dualLaunchCapability))) {
			return a.url.replace(/\/+$/, '');
		}
	}
	if (fallback) return fallback.replace(/\/+$/, '');
	throw new ViewerError('The EHR does not name an imaging server (no associated_endpoints entry with capability smart-imaging-access) and none is configured.');
}

/**
 * Finishes a launch when the page is the redirect target (?code&state or
 * ?error). Returns null when the URL is not an OAuth redirect.
 * @param {URLSearchParams} params
 * @returns {Promise<Session|null>}
 */
export async function completeLaunch(params) {
	if (!params.has('state') || !(params.has('code') || params.has('error'))) return null;
	const pending = JSON.parse(sessionStorage.getItem(pendingKey) || 'null');
	sessionStorage.removeItem(pendingKey);
	if (params.has('error')) {
		const d = params.get('error_description');
		const who = pending && pending.kind === 'imaging' ? 'imaging server' : 'EHR';
		throw new ViewerError(`The ${who} did not authorize the viewer: ${params.get('error')}${d ? ` (${d})` : ''}.`);
	}
	if (!pending || pending.state !== params.get('state')) {
		throw new ViewerError('This login answer does not match a login started here (state mismatch); connect again.');
	}
	if (pending.kind === 'imaging') return completeImagingLaunch(pending, params);
	const { entry } = pending;
	const tok = await exchangeCode(pending, entry.clientId, params.get('code'), 'the EHR');
	if (!tok.patient) {
		throw new ViewerError('The EHR token response names no patient: ask for the launch/patient scope and pick a patient.');
	}
	const session = {
		label: entry.label || entry.iss,
		iss: entry.iss,
		imaging: imagingEndpoint(pending.associated, entry.imaging),
		accessToken: tok.access_token,
		idToken: tok.id_token || '',
		patient: tok.patient,
		expiresAt: tok.expires_in ? Date.now() + tok.expires_in * 1000 : 0,
		entry,
	};
	sessionStorage.setItem(sessionKey, JSON.stringify(session));
	return session;
}

/** POSTs the authorization code to the pending launch's token endpoint. */
async function exchangeCode(pending, clientId, code, who) {
	const body = new URLSearchParams({
		grant_type: 'authorization_code',
		code,
		redirect_uri: pending.redirectURI,
		client_id: clientId,
		code_verifier: pending.verifier,
	});
	const resp = await request(pending.tokenEndpoint, {
		method: 'POST',
		body,
		accept: 'application/json',
		headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
		what: `exchanging the authorization code for an access token at ${who}`,
	});
	const tok = await resp.json();
	if (!tok.access_token) throw new ViewerError(`The token response of ${who} has no access_token.`);
	return tok;
}

/**
 * After the EHR launch: asks the imaging server for its own SMART
 * configuration. When it names smart-imaging-access-dual-launch, the page
 * leaves for its authorization endpoint (a second launch, PKCE S256 and
 * state) and this returns true; otherwise the EHR's token is used for the
 * imaging server too and this returns false. A session already holding an
 * imaging token, or whose imaging server was checked, returns false.
 * @param {Session} session
 */
export async function continueWithImagingServer(session) {
	if (session.imagingToken || session.imagingChecked) return false;
	let conf;
	try {
		conf = await discover(session.imaging, 'reading the SMART configuration of the imaging server');
	} catch (e) {
		// No discovery (404): an imaging server that takes the EHR's token.
		if (!(e instanceof ViewerError) || e.status !== 404) throw e;
		conf = {};
	}
	const caps = Array.isArray(conf.capabilities) ? conf.capabilities : [];
	if (!caps.includes(dualLaunchCapability)) {
		session.imagingChecked = true;
		sessionStorage.setItem(sessionKey, JSON.stringify(session));
		return false;
	}
	const methods = conf.code_challenge_methods_supported;
	if (Array.isArray(methods) && !methods.includes('S256')) {
		throw new ViewerError('The imaging server does not support PKCE with S256; this viewer requires it.');
	}
	const entry = session.entry || {};
	const clientId = entry.imagingClientId || entry.clientId;
	const verifier = randomString(48);
	const state = randomString(16);
	sessionStorage.setItem(pendingKey, JSON.stringify({
		kind: 'imaging', state, verifier, clientId, session,
		tokenEndpoint: conf.token_endpoint, redirectURI: redirectURI(),
	}));
	const q = new URLSearchParams({
		response_type: 'code',
		client_id: clientId,
		redirect_uri: redirectURI(),
		scope: entry.imagingScope || defaultImagingScope,
		state,
		aud: session.imaging,
		code_challenge: await challengeOf(verifier),
		code_challenge_method: 'S256',
	});
	// The EHR's id_token tells the imaging server who is logged in at the
	// EHR (it passes it on as id_token_hint).
	if (session.idToken) q.set('login_hint', session.idToken);
	const sep = conf.authorization_endpoint.includes('?') ? '&' : '?';
	location.assign(`${conf.authorization_endpoint}${sep}${q}`);
	return true;
}

/** Finishes the second (dual) launch: the imaging server's token. */
async function completeImagingLaunch(pending, params) {
	const tok = await exchangeCode(pending, pending.clientId, params.get('code'), 'the imaging server');
	const { session } = pending;
	if (tok.patient !== session.patient) {
		throw new ViewerError(`The imaging server authorized patient ${tok.patient || '(none)'}, not the patient of the EHR launch (${session.patient}); connect again.`);
	}
	session.imagingToken = tok.access_token;
	session.imagingChecked = true;
	if (tok.expires_in) {
		const exp = Date.now() + tok.expires_in * 1000;
		session.expiresAt = session.expiresAt ? Math.min(session.expiresAt, exp) : exp;
	}
	sessionStorage.setItem(sessionKey, JSON.stringify(session));
	return session;
}

/** The current session, if any and not expired. */
export function currentSession() {
	const s = JSON.parse(sessionStorage.getItem(sessionKey) || 'null');
	if (!s || (s.expiresAt && s.expiresAt < Date.now())) return null;
	return s;
}

/** Forgets the session. */
export function endSession() {
	sessionStorage.removeItem(sessionKey);
}
