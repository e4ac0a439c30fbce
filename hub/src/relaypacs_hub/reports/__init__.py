"""The report loop at the hub: reports of delivered studies (found in the archives, received by
HL7 v2 ORU^R01 over MLLP, or posted by a radiologist), each study's report status and times, and
the per-facility feed the agents follow."""
