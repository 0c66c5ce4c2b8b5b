// FHIR side: the ImagingStudy search and what the page shows of it.

import { getJSON, ViewerError } from './http.js';

const maxPages = 20;

/**
 * @typedef {object} Instance
 * @property {string} uid SOPInstanceUID
 * @property {number} number InstanceNumber (0 when unknown)
 *
 * @typedef {object} Series
 * @property {string} uid
 * @property {number} number
 * @property {string} modality
 * @property {string} description
 * @property {string} bodySite
 * @property {number} numberOfInstances
 * @property {Instance[]} instances
 *
 * @typedef {object} Study
 * @property {string} uid StudyInstanceUID
 * @property {string} date "YYYY-MM-DD HH:MM" as recorded, or ""
 * @property {string} description
 * @property {string[]} modalities
 * @property {number} numberOfSeries
 * @property {number} numberOfInstances
 * @property {string} patient subject display
 * @property {string} endpoint WADO-RS base address ("" when the study has none)
 * @property {Series[]} series
 */

/**
 * Searches ImagingStudy for a patient, with their Endpoints, following
 * next links.
 * @param {{fhirBase: string, patient?: string, token?: string}} q
 * @returns {Promise<Study[]>} newest first
 */
export async function searchStudies({ fhirBase, patient, token }) {
	const params = new URLSearchParams();
	if (patient) params.set('patient', patient);
	params.set('_include', 'ImagingStudy:endpoint');
	let url = `${fhirBase.replace(/\/+$/, '')}/ImagingStudy?${params}`;
	const studies = [];
	const endpoints = new Map();
	for (let page = 0; url && page < maxPages; page++) {
		const bundle = await getJSON(url, { token, what: 'searching for imaging studies' });
		if (!bundle || bundle.resourceType !== 'Bundle') {
			throw new ViewerError('The imaging server answered the study search with something other than a FHIR Bundle.');
		}
		for (const e of bundle.entry || []) {
			const r = e.resource;
			if (!r) continue;
			if (r.resourceType === 'Endpoint') {
				if (e.fullUrl) endpoints.set(e.fullUrl, r);
				if (r.id) endpoints.set(`Endpoint/${r.id}`, r);
			} else if (r.resourceType === 'ImagingStudy') {
				studies.push(r);
			}
		}
		const next = (bundle.link || []).find((l) => l.relation === 'next');
		url = next ? next.url : '';
	}
	return studies.map((s) => summarize(s, endpoints)).sort((a, b) => b.date.localeCompare(a.date));
}

/** Resolves an ImagingStudy's first WADO-RS Endpoint reference. */
function endpointAddress(study, endpoints) {
	for (const ref of study.endpoint || []) {
		const r = ref.reference || '';
		let ep;
		if (r.startsWith('#')) {
			ep = (study.contained || []).find((c) => c.resourceType === 'Endpoint' && c.id === r.slice(1));
		} else {
			ep = endpoints.get(r) || endpoints.get(r.replace(/^.*\/(Endpoint\/[^/]+)$/, '$1'));
		}
		if (ep && ep.address) return ep.address.replace(/\/+$/, '');
	}
	return '';
}

function code(cc) {
	return (cc && (cc.code || (cc.coding && cc.coding[0] && cc.coding[0].code))) || '';
}

/** "2024-01-02T14:15:03.250+02:00" → "2024-01-02 14:15" (as recorded, no time zone shift). */
export function shortDate(s) {
	if (!s) return '';
	const m = /^(\d{4}(?:-\d{2}(?:-\d{2})?)?)(?:T(\d{2}:\d{2}))?/.exec(s);
	return m ? (m[2] ? `${m[1]} ${m[2]}` : m[1]) : s;
}

/** @returns {Study} */
function summarize(s, endpoints) {
	const idv = ((s.identifier || []).find((i) => i.system === 'urn:dicom:uid') || (s.identifier || [])[0] || {}).value || '';
	const uid = idv.replace(/^urn:oid:/, '') || s.id;
	const series = (s.series || []).map((se) => ({
		uid: se.uid,
		number: se.number || 0,
		modality: code(se.modality),
		description: se.description || '',
		bodySite: (se.bodySite && (se.bodySite.display || se.bodySite.code)) || '',
		numberOfInstances: se.numberOfInstances || (se.instance || []).length,
		instances: (se.instance || []).map((i) => ({ uid: i.uid, number: i.number || 0 }))
			.sort((a, b) => a.number - b.number),
	})).sort((a, b) => a.number - b.number);
	const modalities = [...new Set([...(s.modality || []).map(code), ...series.map((x) => x.modality)].filter(Boolean))];
	return {
		uid,
		date: shortDate(s.started),
		description: s.description || '',
		modalities,
		numberOfSeries: s.numberOfSeries || series.length,
		numberOfInstances: s.numberOfInstances || series.reduce((n, x) => n + x.numberOfInstances, 0),
		patient: (s.subject && s.subject.display) || '',
		endpoint: endpointAddress(s, endpoints),
		series,
	};
}

/**
 * Reads the patient from the EHR.
 * @returns {Promise<{name: string, birthDate: string}>}
 */
export async function readPatient(fhirBase, id, token) {
	const p = await getJSON(`${fhirBase.replace(/\/+$/, '')}/Patient/${encodeURIComponent(id)}`,
		{ token, what: 'reading the patient from the EHR' });
	const n = (p.name || [])[0] || {};
	const name = n.text || [...(n.given || []), n.family].filter(Boolean).join(' ');
	return { name: name || id, birthDate: p.birthDate || '' };
}
