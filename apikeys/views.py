from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from apikeys import selectors, services
from apikeys.permissions import IsJWTAuthenticated
from apikeys.serializers import ApiKeyCreatedOutput, ApiKeyCreateInput, ApiKeyOutput

ONCE = "Store this key now: it is shown only once and cannot be recovered."


def _user(request: Request) -> User:
    return request.user  # type: ignore[return-value]


class ApiKeyListCreateView(APIView):
    permission_classes = [IsJWTAuthenticated]

    @extend_schema(
        responses={200: inline_serializer("ApiKeyList", {"results": ApiKeyOutput(many=True)})},
        summary="List your API keys",
    )
    def get(self, request: Request) -> Response:
        rows = selectors.apikey_list(user=_user(request))
        return Response({"results": ApiKeyOutput(rows, many=True).data})

    @extend_schema(
        request=ApiKeyCreateInput,
        responses={201: ApiKeyCreatedOutput},
        summary="Create an API key (shown once)",
    )
    def post(self, request: Request) -> Response:
        data = ApiKeyCreateInput(data=request.data if request.data is not None else {})
        data.is_valid(raise_exception=True)
        api_key, raw = services.apikey_create(user=_user(request), **data.validated_data)
        body = dict(ApiKeyOutput(api_key).data)
        body.update(key=raw, message=ONCE)
        return Response(body, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(APIView):
    permission_classes = [IsJWTAuthenticated]

    @extend_schema(responses={200: ApiKeyOutput}, summary="Revoke an API key")
    def delete(self, request: Request, key_id: int) -> Response:
        api_key = services.apikey_revoke(user=_user(request), key_id=key_id)
        return Response(ApiKeyOutput(api_key).data)
