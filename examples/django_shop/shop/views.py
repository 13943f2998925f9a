from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from sagas import SagaInputError
from sagas.contrib.django import start_saga_on_commit

from .models import Order
from .sagas import shop_approval, shop_order

SAGAS = {"shop_order": shop_order, "shop_approval": shop_approval}


def _order(request):
    ref = request.POST["ref"]
    total = int(request.POST.get("total_cents", "500"))
    declined = request.POST.get("declined") == "1"
    return ref, {"ref": ref, "total_cents": total, "declined": declined}


@csrf_exempt  # a JSON endpoint for curl; browser forms keep Django's CSRF check
@require_POST
def checkout(request, saga="shop_order"):
    """The order row and the saga row in one transaction: the saga exists if and only if the
    order commits; its first step is dispatched once the transaction has committed."""
    ref, payload = _order(request)
    try:
        with transaction.atomic():
            order = Order.objects.create(
                ref=ref, total_cents=payload["total_cents"], declined=payload["declined"]
            )
            saga_id = SAGAS[saga].start(
                payload,
                saga_id=f"order-{ref}",  # a retried request starts one saga
                correlation_id=request.headers.get("X-Request-ID"),
            )
    except SagaInputError as exc:  # PayloadInvalid, InvalidSagaId, ...: nothing was committed
        return JsonResponse({"error": type(exc).__name__, "field": exc.field}, status=400)
    return JsonResponse({"saga_id": saga_id, "order": order.pk}, status=202)


@csrf_exempt
@require_POST
def checkout_by_message(request):
    """The same order, started with a ``start_saga`` message sent after the commit (the way to
    start a saga whose definition lives in another codebase)."""
    ref, payload = _order(request)
    with transaction.atomic():
        order = Order.objects.create(ref=ref, total_cents=payload["total_cents"])
        saga_id = start_saga_on_commit("shop_order", payload, saga_id=f"order-{ref}")
    return JsonResponse({"saga_id": saga_id, "order": order.pk}, status=202)


@csrf_exempt
@require_POST
def checkout_then_fail(request):
    """Raises after starting the saga: the transaction rolls back, taking the order and the
    saga row with it, and nothing is dispatched."""
    ref, payload = _order(request)
    with transaction.atomic():
        Order.objects.create(ref=ref, total_cents=500)
        shop_order.start(payload, saga_id=f"order-{ref}")
        raise RuntimeError("the view failed after starting the saga")
