package dicomgen

import (
	"fmt"
	"os"
	"path/filepath"
)

// PatientIDs of the demo set. The decoys exist so that tests catch lookups
// that match by prefix, wildcard or case instead of exact equality.
const (
	// DemoPatientSmart is the MRN of the SMART sandbox patient Danae
	// Kshlerin (IssuerOfPatientID http://hospital.smarthealthit.org).
	DemoPatientSmart = "293ee354-f8ad-4345-b10c-759fdfdcc082"
	// DemoPatientMRN is a plain hospital MRN with two studies.
	DemoPatientMRN = "SIA-MRN-0001"
	// DemoPatientPrefixDecoy extends DemoPatientMRN by one character:
	// "SIA-MRN-0001*" matches it.
	DemoPatientPrefixDecoy = "SIA-MRN-00011"
	// DemoPatientCaseDecoy differs from DemoPatientMRN only by case.
	DemoPatientCaseDecoy = "sia-mrn-0001"
	// DemoIssuer is the IssuerOfPatientID of DemoPatientSmart.
	DemoIssuer = "http://hospital.smarthealthit.org"
)

// demoStudyUID returns the demo study UID for patient p, study s.
func demoStudyUID(p, s int) string { return fmt.Sprintf("%s.1.%d.%d", UIDRoot, p, s) }

// DemoStudies returns the definition of the bundled demo set: 4 patients, 6
// studies, 9 series (CT, MR and one 8-frame Secondary Capture cine), 22
// instances of 64×64 pixels. One study has TimezoneOffsetFromUTC (+0200),
// one has no StudyDescription, and one patient name is not ASCII. The
// returned value is a fresh copy each call.
func DemoStudies() []Study {
	danae := Patient{ID: DemoPatientSmart, Name: "Kshlerin^Danae", BirthDate: "19640513", Sex: "F", Issuer: DemoIssuer}
	alice := Patient{ID: DemoPatientMRN, Name: "Test^Alice", BirthDate: "19800101", Sex: "F"}
	mallory := Patient{ID: DemoPatientPrefixDecoy, Name: "Decoy^Mallory", BirthDate: "19751111", Sex: "M"}
	eve := Patient{ID: DemoPatientCaseDecoy, Name: "Müller^Eve", BirthDate: "19900202", Sex: "F"}
	return []Study{
		{
			Patient: danae, UID: demoStudyUID(1, 1), Dir: "p1-kshlerin/st1-ct-chest",
			ID: "1001", AccessionNumber: "SIA-ACC-1001", Date: "20230314", Time: "093012",
			Description: "CT CHEST WITHOUT CONTRAST", BodyPart: "CHEST",
			ProcedureCode: Code{Value: "CTCHEST", Scheme: "99SIA", Meaning: "CT chest without contrast"},
			Series: []Series{
				{Modality: "CT", Description: "AXIAL 5MM", Instances: 4, Pattern: 0},
				{Modality: "CT", Description: "AXIAL LUNG", Instances: 2, Pattern: 1},
			},
		},
		{
			Patient: danae, UID: demoStudyUID(1, 2), Dir: "p1-kshlerin/st2-mr-brain",
			ID: "1002", AccessionNumber: "SIA-ACC-1002", Date: "20240102", Time: "141503.250",
			TimezoneOffset: "+0200", Description: "MR BRAIN WITH AND WITHOUT CONTRAST", BodyPart: "HEAD",
			ProcedureCode: Code{Value: "MRBRAINWWO", Scheme: "99SIA", Meaning: "MR brain with and without contrast"},
			Series: []Series{
				{Modality: "MR", Description: "T1 AX", Instances: 3, Pattern: 2},
				{Modality: "MR", Description: "T2 AX", Instances: 3, Pattern: 3},
				{Modality: "OT", Description: "CINE 8 FRAMES", Instances: 1, Frames: 8, Pattern: 4},
			},
		},
		{
			Patient: alice, UID: demoStudyUID(2, 1), Dir: "p2-sia-mrn-0001/st1-ct-abdomen",
			ID: "2001", AccessionNumber: "SIA-ACC-2001", Date: "20220607", Time: "101500",
			Description: "CT ABDOMEN PELVIS", BodyPart: "ABDOMEN",
			Series: []Series{
				{Modality: "CT", Description: "PORTAL VENOUS", Instances: 3, Pattern: 1},
			},
		},
		{
			// No StudyDescription on purpose.
			Patient: alice, UID: demoStudyUID(2, 2), Dir: "p2-sia-mrn-0001/st2-mr-knee",
			ID: "2002", AccessionNumber: "SIA-ACC-2002", Date: "20250920", Time: "080000",
			BodyPart: "KNEE",
			Series: []Series{
				{Modality: "MR", Description: "PD SAG", Laterality: "R", Instances: 2, Pattern: 0},
			},
		},
		{
			Patient: mallory, UID: demoStudyUID(3, 1), Dir: "p3-sia-mrn-00011/st1-ct-head",
			ID: "3001", AccessionNumber: "SIA-ACC-3001", Date: "20230101", Time: "235959",
			Description: "CT HEAD (DECOY: PREFIX OF SIA-MRN-0001)", BodyPart: "HEAD",
			Series: []Series{
				{Modality: "CT", Description: "AXIAL", Instances: 2, Pattern: 2},
			},
		},
		{
			Patient: eve, UID: demoStudyUID(4, 1), Dir: "p4-lowercase-sia-mrn-0001/st1-mr-spine",
			ID: "4001", AccessionNumber: "SIA-ACC-4001", Date: "20240515", Time: "110000",
			Description: "MR SPINE (DECOY: CASE OF SIA-MRN-0001)", BodyPart: "LSPINE",
			Series: []Series{
				{Modality: "MR", Description: "T2 SAG", Instances: 2, Pattern: 3},
			},
		},
	}
}

// WriteDemo writes the demo set (DemoStudies) under dir, plus dir/MANIFEST.tsv,
// and returns the manifest. Files of an older data set that no longer exist
// in DemoStudies are not removed.
func WriteDemo(dir string) (Manifest, error) {
	m, err := WriteStudies(dir, DemoStudies())
	if err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("dicomgen: %w", err)
	}
	err = m.WriteTSV(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}
