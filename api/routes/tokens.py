"""``/tokens``: list, create and revoke API tokens through the API.

Every caller manages their own (non-admin) tokens; an admin sees and revokes
everyone's and may create tokens for another owner or admin tokens. A token
never outlives the token that created it: a caller whose token expires gets
new tokens that expire no later (a leaked short-lived token cannot mint a
permanent one). A token the caller may not
see is a 404, as for jobs. The first token of a deployment comes from
``pgd token create`` on the server, which needs no token.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api import auth
from api.auth import Caller, current_token
from api.deps import get_db
from api.problems import problem
from api.schemas.tokens import TokenCreate, TokenCreated, TokenRead
from api.services import tokens as service
from pgd_service.db.models import ApiToken
from pgd_service.db.types import utcnow

router = APIRouter(prefix="/tokens", tags=["tokens"])


def _read(row: ApiToken, caller: Caller) -> TokenRead:
    return TokenRead(
        id=row.id,
        owner=row.owner,
        name=row.name,
        is_admin=row.is_admin,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        current=row.id == caller.token_id,
        state=service.token_state(row),
    )


@router.get("", response_model=list[TokenRead])
def list_tokens(
    owner: str | None = Query(None, max_length=128, description="admins: one owner's only"),
    revoked: bool = Query(False, description="also list revoked tokens"),
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> list[TokenRead]:
    """The caller's tokens (an admin's: everyone's, or ``owner``'s), newest first."""
    rows = service.list_tokens(db_session=db_session, caller=token, owner=owner, revoked=revoked)
    return [_read(row, token) for row in rows]


@router.post(
    "",
    status_code=201,
    response_model=TokenCreated,
    responses={403: {"description": "only admins may do that"}},
)
def create(
    body: TokenCreate,
    response: Response,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> TokenCreated | JSONResponse:
    """A new token; the response holds its only plain-text copy."""
    owner = body.owner if body.owner is not None else token.owner
    if not token.is_admin and owner != token.owner:
        return problem(403, "only an admin may create a token for another owner")
    if not token.is_admin and body.is_admin:
        return problem(403, "only an admin may create an admin token")
    expires_at = None
    if body.expires_in_days is not None:
        expires_at = utcnow() + timedelta(days=body.expires_in_days)
    if token.expires_at is not None and (expires_at is None or expires_at > token.expires_at):
        expires_at = token.expires_at
    secret, row = auth.issue_token(
        db_session=db_session,
        owner=owner,
        is_admin=body.is_admin,
        name=body.name,
        expires_at=expires_at,
    )
    db_session.commit()
    response.headers["Location"] = f"/tokens/{row.id}"
    return TokenCreated(**_read(row, token).model_dump(), token=secret)


@router.delete("/{token_id}", response_model=TokenRead)
def revoke(
    token_id: int,
    token: Caller = Depends(current_token),
    db_session: Session = Depends(get_db),
) -> TokenRead:
    """Revoke a token (the caller's own, or any for an admin): refused from the next
    request on. Revoking a revoked token changes nothing and answers the same."""
    row = service.revoke(db_session=db_session, caller=token, token_id=token_id)
    if row is None:
        raise HTTPException(404, f"token {token_id} not found")
    auth.forget(row.id)
    return _read(row, token)
