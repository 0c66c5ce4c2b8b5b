// A small SMART App Launch client: standalone (or EHR) launch with the
// authorization code flow and PKCE S256, for a public client.
//
//  1. GET {iss}/.well-known/smart-configuration
//  2. redirect to authorization_endpoint with code_challenge
//  3. back here with ?code&state: POST token_endpoint with code_verifier
//  4. the token response names the patient; the imaging server is the
//     EHR's associated_endpoints entry with capability smart-imaging-access
//     (or the configured one), used with the same access token.

import { getJSON, request, ViewerError } from './http.js';

const pendingKey = 'sia-viewer.pending';
const sessionKey = 'sia-viewer.session';

/** The scope a standalone launch asks for when none is configured. */
export const defaultScope = 'launch/patient openid fhirUser patient/Patient.rs patient/ImagingStudy.rs';

/**
 * @typedef {object} SmartEntry a SMART server the user can connect to
 * @property {string} iss the EHR's FHIR base URL
 * @property {string} clientId
 * @property {string} [scope]
 * @property {string} [imaging] imaging FHIR base to use when the EHR advertises none
 * @property {string} [launch] EHR launch context (EHR launch only)
 *
 * @typedef {object} Session a completed launch
 * @property {string} label
 * @property {string} iss
 * @property {string} imaging imaging FHIR base URL
 * @property {string} accessToken
 * @property {string} patient patient id in context
 * @property {number} expiresAt ms since the epoch (0: unknown)
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
export async function discover(iss) {
	const conf = await getJSON(`${iss.replace(/\/+$/, '')}/.well-known/smart-configuration`,
		{ what: 'reading the SMART configuration of the EHR' });
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
		state, verifier, entry, tokenEndpoint: conf.token_endpoint,
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

/** Picks the imaging server the EHR advertises for smart-imaging-access. */
export function imagingEndpoint(associated, fallback) {
	for (const a of associated || []) {
		if (a && a.url && Array.isArray(a.capabilities) && a.capabilities.includes('smart-imaging-access')) {
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
		throw new ViewerError(`The EHR did not authorize the viewer: ${params.get('error')}${d ? ` (${d})` : ''}.`);
	}
	if (!pending || pending.state !== params.get('state')) {
		throw new ViewerError('This login answer does not match a login started here (state mismatch); connect again.');
	}
	const { entry } = pending;
	const body = new URLSearchParams({
		grant_type: 'authorization_code',
		code: params.get('code'),
		redirect_uri: pending.redirectURI,
		client_id: entry.clientId,
		code_verifier: pending.verifier,
	});
	const resp = await request(pending.tokenEndpoint, {
		method: 'POST',
		body,
		accept: 'application/json',
		headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
		what: 'exchanging the authorization code for an access token',
	});
	const tok = await resp.json();
	if (!tok.access_token) throw new ViewerError('The EHR token response has no access_token.');
	if (!tok.patient) {
		throw new ViewerError('The EHR token response names no patient: ask for the launch/patient scope and pick a patient.');
	}
	const session = {
		label: entry.label || entry.iss,
		iss: entry.iss,
		imaging: imagingEndpoint(pending.associated, entry.imaging),
		accessToken: tok.access_token,
		patient: tok.patient,
		expiresAt: tok.expires_in ? Date.now() + tok.expires_in * 1000 : 0,
	};
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
