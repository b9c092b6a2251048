from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response


@api_view(["GET"])
def me(request):
    """Authenticated by simplejwt itself; echoes what the gateway forwarded."""
    return Response(
        {
            "user_id": request.user.id,
            "username": request.user.username,
            "x_user_id": request.headers.get("X-User-Id"),
            "x_forwarded_proto": request.headers.get("X-Forwarded-Proto"),
            "is_secure": request.is_secure(),
            "remote_chain": request.headers.get("X-Forwarded-For"),
            "cookies": request.COOKIES,
        }
    )


@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
def healthz(request):
    return Response({"ok": True})
