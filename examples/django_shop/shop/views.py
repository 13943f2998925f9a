from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from sagas import SagaInputError
from sagas.contrib.django import start_saga_on_commit

from .models import Order


@csrf_exempt  # a JSON endpoint for curl; browser forms keep Django's CSRF check
@require_POST
def checkout(request, saga="shop_order"):
    ref = request.POST["ref"]
    total = int(request.POST.get("total_cents", "500"))
    declined = request.POST.get("declined") == "1"
    try:
        with transaction.atomic():
            order = Order.objects.create(ref=ref, total_cents=total, declined=declined)
            saga_id = start_saga_on_commit(
                saga,
                {"ref": ref, "total_cents": total, "declined": declined},
                saga_id=f"order-{ref}",  # a retried request starts one saga
                correlation_id=request.headers.get("X-Request-ID"),
            )
    except SagaInputError as exc:  # PayloadInvalid, InvalidSagaId, ...: nothing was committed
        return JsonResponse({"error": type(exc).__name__, "field": exc.field}, status=400)
    return JsonResponse({"saga_id": saga_id, "order": order.pk}, status=202)


@csrf_exempt
@require_POST
def checkout_then_fail(request):
    """Raises after queueing the start: the transaction rolls back and no saga is started."""
    ref = request.POST["ref"]
    with transaction.atomic():
        Order.objects.create(ref=ref, total_cents=500)
        start_saga_on_commit("shop_order", {"ref": ref, "total_cents": 500}, saga_id=f"order-{ref}")
        raise RuntimeError("the view failed after queueing the saga")
