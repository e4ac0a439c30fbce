"""FastAPI dependencies: the caller (``Policy``) and the one runtime object (``State``, the
``HubRuntime`` that create_app keeps as ``app.state.hub``)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, Header, HTTPException, Request, status

from relaypacs_hub.auth import devices
from relaypacs_hub.runtime import HubRuntime
from relaypacs_hub.services import studies


def get_runtime(request: Request) -> HubRuntime:
    runtime: HubRuntime = request.app.state.hub
    return runtime


State = Annotated[HubRuntime, Depends(get_runtime)]


# -- who may call a route ----------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who is calling: a person (access JWT), an agent (agent token) or the admin machine token."""

    kind: Literal["user", "agent", "admin_token", "anonymous"]
    name: str
    role: str | None = None
    facilities: list[str] = field(default_factory=list)
    scope: str = "full"
    device_id: str | None = None  # an enrolled agent (kind "agent"); None: the legacy agent token
    totp: bool = False  # a user with a TOTP second factor turned on

    @property
    def agent_facility(self) -> str | None:
        """The one facility an enrolled device acts for; None (all facilities) for the legacy
        agent token and the open development mode."""
        return self.facilities[0] if self.device_id is not None and self.facilities else None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail={"code": "unauthorized", "detail": detail},
        headers={"WWW-Authenticate": "Bearer"},
    )


def _forbidden(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_403_FORBIDDEN, detail={"code": "forbidden", "detail": detail}
    )


def bearer_matches(authorization: str | None, secret: Any) -> bool:
    """``Authorization: Bearer <secret>``, compared in constant time; False without either."""
    if secret is None or not authorization:
        return False
    expected = f"Bearer {secret.get_secret_value()}"
    return hmac.compare_digest(authorization.encode(), expected.encode())


async def _principal(state: HubRuntime, authorization: str | None) -> Principal | None:
    if not authorization:
        return None
    if bearer_matches(authorization, state.settings.admin_token):
        return Principal("admin_token", "admin-token", role="admin")
    if state.settings.allow_agent_token and bearer_matches(
        authorization, state.settings.agent_token
    ):
        return Principal("agent", "agent")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token.startswith(devices.CREDENTIAL_PREFIX):
        device = await devices.authenticate(state.sessionmaker, token)
        if device is None:
            raise _unauthorized("unknown, wrong or revoked device credential")
        return Principal(
            "agent", f"device:{device.id}", None, [device.facility], device_id=device.id
        )
    if scheme.lower() != "bearer" or not token or state.auth is None:
        raise _unauthorized("a valid bearer token is required")
    from relaypacs_hub.auth.service import facilities_of
    from relaypacs_hub.auth.tokens import InvalidToken

    try:
        claims = state.auth.issuer.verify(token.strip())
    except InvalidToken as exc:
        raise _unauthorized("invalid or expired access token") from exc
    user = await state.auth.active_user(claims.sub)
    if user is None:  # deleted or disabled since the token was issued
        raise _unauthorized("invalid or expired access token")
    if claims.fam is not None and not await state.auth.family_alive(claims.fam):
        # signed out, refresh token caught reused, or the account changed since
        raise _unauthorized("invalid or expired access token")
    return Principal(
        "user",
        user.username,
        user.role,
        facilities_of(user),
        claims.scope,
        totp=bool(user.totp_enabled),
    )


class Policy:
    """A route's declared callers. Every hub route depends on exactly one (see the route table
    test): ``public``; ``agent`` (an enrolled device's credential, or the legacy agent token
    unless ``allow_agent_token`` is off; open to callers with no credential only when
    ``anonymous_agents`` is turned on, for development and tests);
    ``device`` (an enrolled device only); a set of user ``roles``; ``admin_token``: the admin
    machine token too; ``uploaders``: also the users whose role may upload straight to the hub
    (``upload_roles``), with a full-scope token and, while ``direct_upload_require_totp`` is on,
    a TOTP second factor turned on."""

    def __init__(
        self,
        name: str,
        roles: frozenset[str] = frozenset(),
        *,
        agent: bool = False,
        public: bool = False,
        enroll_scope: bool = False,
        admin_token: bool = False,
        device: bool = False,
        uploaders: bool = False,
    ) -> None:
        self.name = name
        self.roles = roles
        self.agent = agent
        self.public = public
        self.enroll_scope = enroll_scope
        self.admin_token = admin_token
        self.device = device
        self.uploaders = uploaders

    async def __call__(
        self, state: State, authorization: Annotated[str | None, Header()] = None
    ) -> Principal:
        anonymous = Principal("anonymous", "anonymous")
        if self.public:
            return anonymous
        if (
            self.agent
            and state.settings.anonymous_agents
            and state.settings.agent_token is None
            and not authorization
        ):
            return anonymous  # explicitly opened for development and tests; never by default
        who = await _principal(state, authorization)
        if who is None:
            raise _unauthorized("credentials are required")
        if self.device:
            if who.device_id is not None:
                return who
            raise _forbidden("only an enrolled agent (device credential) may call this route")
        if who.kind == "agent":
            if self.agent:
                return who
            raise _forbidden("agents may not call this route")
        if who.kind == "admin_token":
            if self.admin_token:
                return who
            raise _forbidden("the admin machine token may not call this route")
        # A role the route admits anyway, or one admitted only as a direct uploader.
        uploading = (
            self.uploaders
            and who.role not in self.roles
            and who.role in state.settings.upload_role_set
        )
        if who.role in self.roles or uploading:
            if who.scope != "full" and not self.enroll_scope:
                raise _forbidden("enroll a TOTP second factor first (/api/v1/auth/totp/enroll)")
            if uploading and state.settings.direct_upload_require_totp and not who.totp:
                raise HTTPException(
                    status_code=status.HTTP_403_FORBIDDEN,
                    detail={
                        "code": "totp_required",
                        "detail": "turn on two-factor sign-in (TOTP) to upload from outside a "
                        "facility network",
                    },
                )
            return who
        raise _forbidden(f"this route is for: {self.name}")


ROLES = frozenset({"clinician", "radiographer", "radiologist", "admin"})
PUBLIC = Policy("public", public=True)
AGENT = Policy("agent", agent=True)
STUDY_READERS = Policy(
    "agent, radiologist, admin", frozenset({"radiologist", "admin"}), agent=True, admin_token=True
)
# The dashboard's study list and statistics: people who read studies, and the admin machine
# token; not agents (a device reads one study's status, never the list of every facility's).
STUDY_BROWSERS = Policy("radiologist, admin", frozenset({"radiologist", "admin"}), admin_token=True)
# Sending a study (manifest, tus segments, commit): agents as always, and people uploading
# straight to the hub (no agent nearby) for one of their facilities.
UPLOADERS = Policy("agent, uploading user", agent=True, uploaders=True)
# One study's status: as STUDY_READERS, and the direct uploaders following what they sent.
STUDY_STATUS_READERS = Policy(
    "agent, radiologist, admin, uploading user",
    frozenset({"radiologist", "admin"}),
    agent=True,
    admin_token=True,
    uploaders=True,
)
ADMIN = Policy("admin", frozenset({"admin"}), admin_token=True)
ANY_USER = Policy("any user", ROLES, enroll_scope=True)
DEVICE = Policy("device", device=True)

PublicAccess = Annotated[Principal, Depends(PUBLIC)]
AgentAuth = Annotated[Principal, Depends(AGENT)]
StudyReader = Annotated[Principal, Depends(STUDY_READERS)]
Uploader = Annotated[Principal, Depends(UPLOADERS)]
StudyStatusReader = Annotated[Principal, Depends(STUDY_STATUS_READERS)]
StudyBrowser = Annotated[Principal, Depends(STUDY_BROWSERS)]
AdminAuth = Annotated[Principal, Depends(ADMIN)]
UserAuth = Annotated[Principal, Depends(ANY_USER)]
DeviceAuth = Annotated[Principal, Depends(DEVICE)]


def facility_scope(who: Principal) -> list[str] | None:
    """The facilities whose studies a caller may list: None for every facility (admins, the admin
    machine token); else the user's own facilities, exactly as stored (``facilities_of``: a
    membership list with no wildcard, so an empty list is no facility)."""
    if who.kind == "admin_token" or who.role == "admin":
        return None
    return list(who.facilities)


def route_policy(dependant: Any) -> list[Policy]:
    """The policies a route depends on (for the route table test)."""
    found = [d.call for d in dependant.dependencies if isinstance(d.call, Policy)]
    for d in dependant.dependencies:
        found += route_policy(d)
    return found


async def readable_study(state: HubRuntime, who: Principal, study_uid: str) -> str | None:
    """The study's facility, once the caller may see the study: 404 when the hub holds no
    instance of it, 403 when it belongs to a facility outside the caller's (a device reads its
    own facility's studies, a user those of their facilities, an admin every one)."""
    allowed: list[str] | None
    if who.kind == "anonymous":  # an agent route with no agent credential configured (dev)
        allowed = None
    elif who.kind == "agent":
        allowed = [who.agent_facility] if who.agent_facility is not None else None
    else:
        allowed = facility_scope(who)
    return await studies.readable_study(state.sessionmaker, study_uid, allowed)


def upload_facility(who: Principal, requested: str | None) -> str | None:
    """The facility a caller sends a study for. An enrolled device: its own (403 naming
    another). A person uploading straight to the hub: the one they name, which must be one of
    theirs (403), or their only one (422 when they have several and name none). The legacy agent
    token and the open development mode: what the request says (None: not recorded)."""
    if who.kind == "user":
        if requested is not None:
            if requested not in who.facilities:
                raise _forbidden(f"you are not a member of facility {requested}")
            return requested
        if len(who.facilities) == 1:
            return who.facilities[0]
        if not who.facilities:
            raise _forbidden(
                "your account belongs to no facility: ask an admin of the hub to add you to the "
                "facility you send studies for"
            )
        raise HTTPException(
            status_code=422,
            detail={
                "code": "facility_required",
                "detail": "you belong to several facilities ("
                + ", ".join(who.facilities)
                + "): say which one this study is for (facility)",
            },
        )
    if who.agent_facility is not None:
        if requested is not None and requested != who.agent_facility:
            raise _forbidden("a device may only send studies for its own facility")
        return who.agent_facility
    return requested


def claimant(who: Principal) -> str:
    """Who a study's facility claim is recorded for: the device, or ``user:<name>``."""
    return f"user:{who.name}" if who.kind == "user" else who.name


async def claim_upload(
    state: HubRuntime, who: Principal, study_uid: str, requested: str | None
) -> str | None:
    """The facility the caller sends ``study_uid`` for (``upload_facility``), once the study is
    claimed for it: a study another facility holds is refused alike for devices and people
    (409 ``study_held`` / ``study_refused``, 403 ``forbidden``)."""
    facility = upload_facility(who, requested)
    if who.kind == "user" or who.device_id is not None:
        await studies.claim_for_device(state, facility, claimant(who), study_uid)
    return facility
