<#
.SYNOPSIS
  Install the RelayPACS agent as a Windows service (WinSW), enroll it, and start it.
  NOT TESTED in RelayPACS's CI (no Windows machine there); the supported, tested platforms are
  Debian and Raspberry Pi OS bookworm (installers/debian). See docs/agent.md.

.EXAMPLE
  # In an elevated PowerShell, in a folder holding WinSW-x64.exe, a wheels\ folder (the agent's
  # wheels for win_amd64, Python 3.11 or newer) and pwa\ (the built web app):
  .\install.ps1 -HubUrl https://hub.example.org -EnrollCode Xy12... -Name xray-room-2
#>
param(
  [Parameter(Mandatory = $true)][string]$HubUrl,
  [string]$EnrollCode = "",
  [string]$Name = $env:COMPUTERNAME,
  [string]$Python = "py -3.11"
)
$ErrorActionPreference = "Stop"
$Base = "$env:ProgramFiles\RelayPACS\agent"
$Data = "$env:ProgramData\RelayPACS\agent"
New-Item -ItemType Directory -Force -Path $Base, $Data, "$Data\inbox" | Out-Null

Write-Host "==> Python venv in $Base\venv (offline, from .\wheels)"
& cmd /c "$Python -m venv `"$Base\venv`""
& "$Base\venv\Scripts\python.exe" -m pip install --quiet --no-index --find-links .\wheels relaypacs-agent
Copy-Item -Recurse -Force .\pwa "$Base\pwa"

Write-Host "==> service definition"
Copy-Item -Force .\WinSW-x64.exe "$Base\relaypacs-agent.exe"
(Get-Content .\relaypacs-agent.xml) -replace 'value="https://hub.example.org"', "value=`"$HubUrl`"" |
  Set-Content "$Base\relaypacs-agent.xml"

# Only the service account and administrators may read the data (credential, database, spool).
icacls $Data /inheritance:r /grant:r "Administrators:(OI)(CI)F" "SYSTEM:(OI)(CI)F" `
  "NT AUTHORITY\LocalService:(OI)(CI)M" | Out-Null

if ($EnrollCode) {
  Write-Host "==> enrolling at $HubUrl"
  $env:RELAYPACS_AGENT_DATA_DIR = $Data
  & "$Base\venv\Scripts\relaypacs-agent.exe" enroll --hub-url $HubUrl --code $EnrollCode --name $Name
}

& "$Base\relaypacs-agent.exe" install
& "$Base\relaypacs-agent.exe" start
Write-Host "==> done: RelayPACS agent service 'relaypacs-agent' started (Services, or: sc query relaypacs-agent)"
Write-Host "    Windows Firewall: allow TCP 11112 (C-STORE) and 8081 (LAN web app) from the LAN only."
