from django.contrib import admin
from django.urls import path
from shop import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("checkout/", views.checkout),
    path("checkout/approval/", views.checkout, {"saga": "shop_approval"}),
    path("checkout/by-message/", views.checkout_by_message),
    path("checkout-then-fail/", views.checkout_then_fail),
]
