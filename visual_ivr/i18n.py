"""Words of the pages themselves (flow texts come from the flow)."""

from __future__ import annotations

TEXTS: dict[str, dict[str, str]] = {
    "person": {"zh": "找人工客服", "en": "Talk to a person"},
    "back": {"zh": "返回上一步", "en": "Back"},
    "send": {"zh": "确定", "en": "Continue"},
    "service": {"zh": "客服热线", "en": "Service number"},
    "call_us": {"zh": "拨打 {number}", "en": "Call {number}"},
    "step_error": {"zh": "请重新输入", "en": "Please try again"},
    "err_length": {"zh": "请输入{n}位", "en": "Please enter {n} characters"},
    "err_length_range": {"zh": "请输入{a}到{b}位", "en": "Please enter {a} to {b} characters"},
    "err_pattern": {"zh": "格式不正确，请检查后重新输入", "en": "That does not look right. Please check it"},
    "err_checksum": {"zh": "号码校验未通过，请检查后重新输入", "en": "That number does not check out. Please check it"},
    "err_chars": {"zh": "只能输入数字", "en": "Digits only, please"},
    "err_empty": {"zh": "请先输入再提交", "en": "Please enter something first"},
    "digits_hint": {"zh": "仅数字", "en": "Digits only"},
    "free_text_hint": {"zh": "请输入您的回答", "en": "Type your answer"},
    "digits_hint_x": {"zh": "数字，最后一位可以是 X", "en": "Digits; the last one may be X"},
    "results": {"zh": "查询结果", "en": "Results"},
    "person_title": {"zh": "联系人工客服", "en": "Talk to a person"},
    "person_intro": {"zh": "请选择联系方式，您在本页的操作记录会一并转给客服。",
                     "en": "Choose how. The person will see everything you did here."},
    "connect_now": {"zh": "现在转接我的通话", "en": "Connect my call now"},
    "connect_hint": {"zh": "您的电话仍在线，我们会直接把通话转给客服。",
                     "en": "Your call is still on the line: we put it straight through."},
    "callback_asap": {"zh": "尽快给我回电", "en": "Call me back as soon as possible"},
    "callback_slot": {"zh": "预约回电时间", "en": "Call me back at"},
    "callback_book": {"zh": "预约", "en": "Book this time"},
    "callback_number": {"zh": "回电号码", "en": "Number we call"},
    "cancel": {"zh": "取消", "en": "Cancel"},
    "cancel_callback": {"zh": "取消这次回电", "en": "Cancel this callback"},
    "keep_going": {"zh": "继续自助服务", "en": "Back to self-service"},
    "asap": {"zh": "尽快", "en": "as soon as possible"},
    "callback_done_title": {"zh": "已为您预约回电", "en": "Callback booked"},
    "callback_done": {"zh": "客服将于{when}致电 {number}。", "en": "A person will call {number} {when}."},
    "callback_cancelled": {"zh": "回电已取消。", "en": "The callback is cancelled."},
    "moved_title": {"zh": "正在为您转接", "en": "Connecting you"},
    "moved": {"zh": "请留意您的电话，客服马上接听。您可以关闭本页。",
              "en": "Keep your phone at your ear: a person picks up shortly. You can close this page."},
    "to_phone_title": {"zh": "请在电话中继续", "en": "Please continue on the phone"},
    "to_phone": {"zh": "我们正在电话中为您转接人工服务，请留意通话。",
                 "en": "We are putting your call through to a person: please listen on the phone."},
    "back_on_phone_title": {"zh": "已回到电话服务", "en": "Back on the phone"},
    "back_on_phone": {"zh": "您的服务已在电话中继续，本页已关闭。",
                      "en": "Your session went on on the phone, so this page is closed."},
    "done_title": {"zh": "感谢使用", "en": "Thank you"},
    "done": {"zh": "本次服务已结束，您可以关闭本页。", "en": "This session has ended. You can close this page."},
    "expired_title": {"zh": "链接已过期", "en": "This link has expired"},
    "expired": {"zh": "为保护您的信息，链接只在短时间内有效。如需帮助，请再次致电。",
                "en": "To protect your details, links work for a short time only. Please call us again."},
    "ended_title": {"zh": "本次服务已结束", "en": "This session has ended"},
    "ended": {"zh": "这个链接对应的服务已经结束。如需帮助，请再次致电。",
              "en": "The session this link belonged to is over. Please call us again if you need help."},
    "other_device_title": {"zh": "请在原设备上打开", "en": "Opened on another device"},
    "other_device": {"zh": "这个链接已在另一台设备上打开。为保护您的信息，它只能在第一次打开它的设备上使用。",
                     "en": "This link was already opened on another device. To protect your details it only "
                           "works on the device that opened it first."},
    "not_found_title": {"zh": "找不到页面", "en": "Page not found"},
    "not_found": {"zh": "这个链接无效。请检查短信中的链接，或再次致电。",
                  "en": "This link is not valid. Please check the link in your text message, or call us."},
    "too_many_title": {"zh": "请稍后再试", "en": "Please try again later"},
    "too_many": {"zh": "无效链接的访问次数过多，请稍后再试，或再次致电。",
                 "en": "Too many invalid links were opened from your network. Please try again later, "
                       "or call us again."},
    "bad_request_title": {"zh": "请求无效", "en": "Something went wrong"},
    "bad_request": {"zh": "页面已过期或提交有误，请返回重试。",
                    "en": "The page was out of date or the form was not valid. Please go back and try again."},
    "error_title": {"zh": "暂时无法服务", "en": "Sorry, something went wrong"},
    "error": {"zh": "请稍后再试，或直接致电。", "en": "Please try again later, or call us."},
    "connect_failed": {"zh": "暂时无法转接您的通话，请选择回电。",
                       "en": "We could not put your call through just now. Please choose a callback."},
    "callback_failed": {"zh": "暂时无法预约回电，请稍后再试或直接致电。",
                        "en": "We could not book the callback just now. Please try again, or call us."},
    "continue": {"zh": "继续", "en": "Continue"},
    "step_of": {"zh": "第{i}步，共{n}步", "en": "Step {i} of {n}"},
}


def lang_key(lang: str | None) -> str:
    return "zh" if (lang or "zh").lower().startswith("zh") else "en"


def t(name: str, lang: str | None, **kw: object) -> str:
    text = TEXTS[name][lang_key(lang)]
    return text.format(**kw) if kw else text
